"""The ``sspo-jax`` command line: train, eval, export, plot, compare.

    sspo-jax train --config configs/tiny_sspo.yaml --set train.steps=3 --run-dir runs/try
    sspo-jax eval --model runs/try --samples 8
    sspo-jax export --checkpoint runs/try --out exported/
    sspo-jax plot runs/try
    sspo-jax compare configs/compare/equal_eps.yaml --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

_EPILOG_OVERRIDES = """\
overrides use dotted keys of the YAML config, e.g.
  --set train.steps=3 --set checkpoint.every=2 --set algorithm.eps_high=0.28
  --set algorithm.preset=grpo --set data.batch_size=16 --set optim.lr=1e-6
an unknown key, a wrong type or an impossible value is an error naming the key."""


def _quiet_runtime() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def cmd_train(args: argparse.Namespace) -> int:
    """`sspo-jax train`: load the config (with --set overrides), initialise multi-host JAX if configured, train; exit code."""
    from sspo_jax.parallel import initialize
    from sspo_jax.train import load_config, train

    overrides = list(args.set or [])
    if args.run_dir is not None:
        if not args.run_dir.strip():
            from sspo_jax.errors import ConfigError

            raise ConfigError("--run-dir is empty: name the run directory (or leave the flag out to use the config's "
                              "run_dir)")
        overrides.append(f"run_dir={args.run_dir}")
    if args.no_progress:
        overrides.append("logging.progress=false")
    cfg = load_config(args.config, overrides)
    initialize(cfg.distributed)  # multi-host jobs: before any JAX computation; one process: nothing
    from sspo_jax.train.signals import TrainingStopped

    try:
        summary = train(cfg, allow_config_change=tuple(args.allow_config_change or ()))
    except TrainingStopped as stopped:  # SIGTERM / Ctrl-C: a clean stop, not an error
        print(str(stopped), file=sys.stderr)
        return 128 + stopped.signum
    before, after = summary.get("accuracy_before"), summary.get("accuracy_after")
    print(f"run directory: {summary['run_dir']}")
    if before is not None and after is not None:
        print(f"held-out accuracy (greedy): {before:.3f} before -> {after:.3f} after "
              f"({100 * (after - before):+.1f} points) in {summary['wall_time_s']:.0f} s")
    s_before, s_after = summary.get("sampled_accuracy_before"), summary.get("sampled_accuracy_after")
    if s_before is not None and s_after is not None:
        print(f"held-out accuracy (sampled, temperature {cfg.sampling.temperature:g}): {s_before:.3f} before -> "
              f"{s_after:.3f} after ({100 * (s_after - s_before):+.1f} points)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """`sspo-jax eval`: greedy (and sampled, pass@k) held-out accuracy of a run's checkpoint or an HF directory; exit code."""
    import jax  # noqa: F401 - initialise JAX before loading models
    from flax import nnx

    from sspo_jax.errors import ConfigError
    from sspo_jax.models import from_pretrained
    from sspo_jax.rewards import get_reward
    from sspo_jax.train import load_config, resolve_model_path
    from sspo_jax.train.build import checkpoint_stop_tokens, load_tokenizer, resolve_sampling
    from sspo_jax.train.evaluate import build_eval_batches, eval_data_config, evaluate_policy
    from sspo_jax.train.load_run import is_run_dir, load_run

    if args.samples < 0:
        raise ConfigError(f"--samples={args.samples} must be >= 0 (0 = greedy only)")
    if args.size < 1:
        raise ConfigError(f"--size={args.size} must be >= 1")
    get_reward(args.reward)  # an unknown --reward fails before any model loads
    overrides = list(args.set or [])
    if args.max_new_tokens is not None:
        overrides.append(f"eval.max_new_tokens={args.max_new_tokens}")
    if args.data and args.data != "arithmetic":
        overrides += [f"data.source={'parquet' if args.data.endswith('.parquet') else 'jsonl'}",
                      f"data.path={args.data}", f"eval.path={args.data}"]
    if is_run_dir(args.model):
        run = load_run(args.model, overrides=overrides)
        cfg, tokenizer, sampling = run.config, run.tokenizer, run.sampling
        model_like, where = (run.graphdef, run.params), f"{run.run_dir} step {run.step}"
    else:
        cfg = load_config(args.config, [f"model.path={args.model}", *overrides])
        model_dir = resolve_model_path(cfg.model.path)
        tokenizer = load_tokenizer(model_dir)
        compute = cfg.model.compute_dtype
        model = from_pretrained(model_dir, dtype=jax.numpy.dtype(cfg.model.dtype),
                                compute_dtype=compute and jax.numpy.dtype(compute))
        sampling = resolve_sampling(cfg.sampling, tokenizer, model.config.eos_token_id,
                                    checkpoint_stops=checkpoint_stop_tokens(cfg, model_dir),
                                    vocab_size=model.config.vocab_size)
        model_like, where = nnx.split(model), str(model_dir)
    data = eval_data_config(cfg.data, size=args.size, batch_size=cfg.eval.batch_size,
                            path=cfg.eval.path or (args.data if args.data != "arithmetic" else None))
    if data is None:
        raise ConfigError("nothing to evaluate on: pass --data FILE.jsonl (or use the arithmetic task)")
    batches = build_eval_batches(data, tokenizer, args.size)
    result = evaluate_policy(model_like, tokenizer, batches, sampling, cfg.rewards, reward_name=args.reward,
                             samples=args.samples, seed=cfg.train.seed, max_new_tokens=cfg.eval.max_new_tokens)
    result = {"model": where, **{k.removeprefix("eval/"): v for k, v in result.items()}}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        _write_new_file(Path(args.out), text + "\n", "--out")
    return 0


def _write_new_file(path: Path, text: str, flag: str) -> None:
    from sspo_jax.errors import ConfigError

    try:
        path.write_text(text)
    except OSError as err:
        raise ConfigError(f"{flag} {str(path)!r}: cannot write ({err.strerror})") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "generation_config.json", "chat_template.jinja")


def cmd_export(args: argparse.Namespace) -> int:
    """`sspo-jax export`: write a run's checkpoint as a Hugging Face directory (safetensors, config, tokenizer); exit code."""
    import shutil

    from sspo_jax.errors import ConfigError
    from sspo_jax.models import save_pretrained
    from sspo_jax.train.load_run import load_run

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file, not a directory: name a new or empty directory")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise ConfigError(f"--out {str(out)!r} is not empty: name a new or empty directory, or pass --force to "
                          "write the export's files into it (other files are left as they are)")
    run = load_run(args.checkpoint)
    _check_finite(run)
    try:
        out.mkdir(parents=True, exist_ok=True)
        save_pretrained(run.model(), out, dtype=args.dtype)
        for name in TOKENIZER_FILES:
            src = run.model_dir / name
            if src.is_file():
                shutil.copy2(src, out / name)
        run.tokenizer.save_pretrained(str(out))
    except OSError as err:
        raise ConfigError(f"--out {str(out)!r}: cannot write the export ({err.strerror})") from None
    print(f"exported step {run.step} of {run.run_dir} to {out}")
    return 0


def _check_finite(run) -> None:
    """Refuses to export a checkpoint with a NaN or infinite weight (`CheckpointError` naming the first)."""
    import jax
    import numpy as np

    from sspo_jax.errors import CheckpointError

    for path, leaf in jax.tree_util.tree_leaves_with_path(run.params):
        values = np.asarray(jax.device_get(leaf), dtype=np.float32)
        if not np.all(np.isfinite(values)):
            bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
            raise CheckpointError(f"checkpoint {run.run_dir}/checkpoints/{run.step} has non-finite weights "
                                  f"({bad} of {values.size} values of {jax.tree_util.keystr(path)} are NaN or inf): "
                                  "training diverged; export an earlier step of "
                                  f"{_checkpoint_steps_of(run)} or retrain with a lower optim.lr")


def _checkpoint_steps_of(run) -> list[int]:
    """The checkpoint steps of a loaded run's directory."""
    from sspo_jax.train.load_run import checkpoint_steps

    return checkpoint_steps(run.run_dir)


def cmd_plot(args: argparse.Namespace) -> int:
    """`sspo-jax plot`: draw a run's metrics (reward, accuracy, clip fractions, entropy) to a PNG; exit code."""
    from sspo_jax.errors import ConfigError
    from sspo_jax.train.plotting import plot_run

    try:
        path = plot_run(Path(args.run_dir), Path(args.out) if args.out else None)
    except OSError as err:
        where = args.out or str(Path(args.run_dir) / "curves.png")
        raise ConfigError(f"cannot write the plot to {where!r} ({err.strerror}): pass --out PATH.png "
                          "somewhere writable") from None
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every subcommand (train, eval, export, plot, compare)."""
    parser = argparse.ArgumentParser(
        prog="sspo-jax", description="SSPO and RLVR baselines (GRPO, DAPO, Dr. GRPO, GSPO, PPO, SPPO) in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a policy with RL from verifiable rewards",
                       description="Train a policy. Resumes automatically from the newest checkpoint in the run "
                                   "directory.", epilog=_EPILOG_OVERRIDES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--run-dir", help="run directory (default: run_dir of the config)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-config-change", action="append", metavar="KEY",
                   help="resume although config KEY (or a whole section, e.g. algorithm) differs from the "
                        "checkpoint's; recorded in RUN_DIR/config_changes.jsonl (repeatable; keys such as "
                        "train.steps, eval.*, logging.* need no flag)")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="held-out accuracy and pass@k of a model or checkpoint",
                       description="Greedy accuracy (and pass@k) of a Hugging Face model directory or of a run "
                                   "directory's checkpoint, on the built-in task or a JSONL/Parquet file. Prints "
                                   "JSON.", epilog=_EPILOG_OVERRIDES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF directory, builtin:tiny-arith, RUN_DIR or RUN_DIR/checkpoints/STEP")
    p.add_argument("--data", default="arithmetic", help="'arithmetic' (held-out problems) or a .jsonl/.parquet file")
    p.add_argument("--config", help="YAML config for prompt/data/reward settings (default: the run's, or defaults)")
    p.add_argument("--samples", type=int, default=0, help="k sampled responses per problem for pass@k (0 = greedy only)")
    p.add_argument("--size", type=int, default=128, help="number of problems")
    p.add_argument("--reward", default="math", help="correctness reward (default math)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="response budget of the evaluation (default: eval.max_new_tokens, else sampling's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--out", help="also write the JSON summary here")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("export", help="write a checkpoint's policy as a Hugging Face directory",
                       description="Export the policy of RUN_DIR (newest checkpoint) or RUN_DIR/checkpoints/STEP "
                                   "to a Hugging Face directory (config.json, model.safetensors, tokenizer) that "
                                   "transformers and vLLM load.")
    p.add_argument("--checkpoint", required=True, help="RUN_DIR or RUN_DIR/checkpoints/STEP")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="weights dtype (default: as trained)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out directory")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("plot", help="PNG curves of a run's metrics",
                       description="Plot reward, accuracy, clip fractions, entropy and response length from "
                                   "RUN_DIR/metrics.jsonl into RUN_DIR/curves.png (or --out).")
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--out", help="output PNG path")
    p.set_defaults(fn=cmd_plot)

    from sspo_jax.tools.compare import command as compare_command  # tooling: the CLI composes it with the core

    p = sub.add_parser("compare", help="train a comparison spec over seeds and write its report",
                       description=compare_command.DESCRIPTION, epilog=compare_command.EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    compare_command.add_arguments(p)
    p.set_defaults(fn=compare_command.run)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `sspo-jax`: parse `argv`, run the subcommand; 0 on success, 2 (with a one-line
    ``error:``) on any `sspo_jax.errors.SspoError` or a missing file."""
    _quiet_runtime()
    args = build_parser().parse_args(argv)
    from sspo_jax.errors import SspoError, one_line

    try:
        return args.fn(args)
    except (SspoError, FileNotFoundError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
