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


def _find_run_dir(path: Path) -> tuple[Path, Optional[int]]:
    """A run directory and an optional step from RUN_DIR or RUN_DIR/checkpoints/STEP."""
    if path.name.isdigit() and path.parent.name == "checkpoints":
        return path.parent.parent, int(path.name)
    return path, None


def _is_run_dir(path: Path) -> bool:
    run, _ = _find_run_dir(path)
    return (run / "config.yaml").is_file() and (run / "checkpoints").is_dir()


def _trainer_for_run(path: Path, overrides: list[str] = ()):
    from sspo_jax.train import Trainer, load_config

    run, step = _find_run_dir(path)
    cfg = load_config(run / "config.yaml", ["logging.progress=false", "logging.tensorboard=false", *overrides])
    trainer = Trainer(cfg, run, echo=lambda s: None, resume=True, resume_step=step)
    if trainer.start_step == 0:
        raise SystemExit(f"error: {run} holds no checkpoint to load")
    return trainer


def cmd_train(args: argparse.Namespace) -> int:
    """`sspo-jax train`: load the config (with --set overrides), initialise multi-host JAX if configured, train; exit code."""
    from sspo_jax.parallel import initialize
    from sspo_jax.train import load_config, train

    overrides = list(args.set or [])
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    if args.no_progress:
        overrides.append("logging.progress=false")
    cfg = load_config(args.config, overrides)
    initialize(cfg.distributed)  # multi-host jobs: before any JAX computation; one process: nothing
    summary = train(cfg)
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

    from sspo_jax.models import from_pretrained
    from sspo_jax.train import load_config, resolve_model_path
    from sspo_jax.train.evaluate import build_eval_batches, eval_data_config, evaluate_policy
    from sspo_jax.train.trainer import load_tokenizer

    path = Path(args.model)
    overrides = list(args.set or [])
    if args.data and args.data != "arithmetic":
        overrides += [f"data.source={'parquet' if args.data.endswith('.parquet') else 'jsonl'}",
                      f"data.path={args.data}", f"eval.path={args.data}"]
    if _is_run_dir(path):
        trainer = _trainer_for_run(path, overrides)
        cfg, tokenizer = trainer.cfg, trainer.tokenizer
        model_like, sampling = (trainer.models.policy, trainer.state.params), trainer.sampling
        where = f"{_find_run_dir(path)[0]} step {trainer.start_step}"
    else:
        cfg = load_config(args.config, [f"model.path={args.model}", *overrides])
        model_dir = resolve_model_path(cfg.model.path)
        tokenizer = load_tokenizer(model_dir)
        model = from_pretrained(model_dir)
        eos = tuple(cfg.sampling.eos_token_ids) or (tokenizer.eos_token_id,)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        sampling = cfg.sampling.replace(eos_token_ids=eos, pad_token_id=pad)
        model_like = nnx.split(model)
        where = str(model_dir)
    data = eval_data_config(cfg.data, size=args.size, batch_size=cfg.eval.batch_size,
                            path=cfg.eval.path or (args.data if args.data != "arithmetic" else None))
    if data is None:
        raise SystemExit("error: nothing to evaluate on: pass --data FILE.jsonl (or use the arithmetic task)")
    batches = build_eval_batches(data, tokenizer, args.size)
    result = evaluate_policy(model_like, tokenizer, batches, sampling, cfg.rewards, reward_name=args.reward,
                             samples=args.samples, seed=cfg.train.seed)
    result = {"model": where, **{k.removeprefix("eval/"): v for k, v in result.items()}}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """`sspo-jax export`: write a run's checkpoint as a Hugging Face directory (safetensors, config, tokenizer); exit code."""
    import shutil

    from flax import nnx

    from sspo_jax.models import save_pretrained

    trainer = _trainer_for_run(Path(args.checkpoint))
    model = nnx.merge(trainer.models.policy, trainer.state.params)
    out = Path(args.out)
    save_pretrained(model, out, dtype=args.dtype)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                 "generation_config.json", "chat_template.jinja"):
        src = trainer.model_dir / name
        if src.is_file():
            shutil.copy2(src, out / name)
    trainer.tokenizer.save_pretrained(str(out))
    print(f"exported step {trainer.start_step} of {_find_run_dir(Path(args.checkpoint))[0]} to {out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """`sspo-jax plot`: draw a run's metrics (reward, accuracy, clip fractions, entropy) to a PNG; exit code."""
    from sspo_jax.train.plotting import plot_run

    path = plot_run(Path(args.run_dir), Path(args.out) if args.out else None)
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
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("plot", help="PNG curves of a run's metrics",
                       description="Plot reward, accuracy, clip fractions, entropy and response length from "
                                   "RUN_DIR/metrics.jsonl into RUN_DIR/curves.png (or --out).")
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--out", help="output PNG path")
    p.set_defaults(fn=cmd_plot)

    from sspo_jax.compare import command as compare_command

    p = sub.add_parser("compare", help="train a comparison spec over seeds and write its report",
                       description=compare_command.DESCRIPTION, epilog=compare_command.EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    compare_command.add_arguments(p)
    p.set_defaults(fn=compare_command.run)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `sspo-jax`: parse `argv`, run the subcommand; 0 on success, 2 (with a one-line `error:`) on bad input."""
    _quiet_runtime()
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except _user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's config, files or data: printed without a traceback."""
    from sspo_jax.algorithms.config import ConfigError
    from sspo_jax.data import DataError
    from sspo_jax.models import CheckpointError
    from sspo_jax.models import ConfigError as ModelConfigError
    from sspo_jax.rewards import RewardConfigError
    from sspo_jax.rollout import SamplingError
    from sspo_jax.train import TrainingError

    return (ConfigError, DataError, CheckpointError, ModelConfigError, RewardConfigError, SamplingError,
            TrainingError, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())
