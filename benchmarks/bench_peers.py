"""Peer benchmark: the same GRPO job on sspo_jax, TRL and Tunix, one framework after the other.

The job is the tiny CPU job of ``configs/tiny_grpo.yaml``: the shipped tiny Qwen2
(``sspo_jax/assets/tiny-arith``, 3 layers, hidden 96, vocab 287) on the built-in arithmetic task,
32 prompts x 8 responses per step, 48 new tokens at temperature 1, AdamW lr 3e-4 (warmup 2,
grad-clip 1), the GRPO loss (eps 0.2, k3 KL with beta 0.04 to the initial policy,
seq-mean-token-mean) and the math reward. ``--presets grpo,sspo`` adds the SSPO preset
(``configs/tiny_sspo.yaml``) against TRL's sequence-level importance sampling (GSPO,
``importance_sampling_level="sequence"``) and Tunix's ``loss_algo="gspo-token"``.

How it runs:
  * TRL 1.16 and Tunix 0.1.7 live in their own virtualenvs, ``.peers/trl`` and ``.peers/tunix``,
    built on first use from the pins in `PEER_REQUIREMENTS` (a stamp file holds the pins; a
    change of pins reinstalls). ``--setup-only`` builds them and exits.
  * The prompts come from sspo_jax's own data pipeline (`PromptBatcher(build_source(cfg.data))`,
    the trainer's order): `export_prompts` writes them with their gold answers to
    ``<out>/peers/prompts_<preset>.jsonl`` and every framework reads that file, so each step
    trains on the same 32 prompts everywhere (the sspo_jax job checks its own batches against it).
  * Each framework runs in its own subprocess (``benchmarks/peers/*.py``), never two at once,
    and writes one record per optimizer step: whole-step seconds, the three phases
    (generate + reward, the extra no-grad forwards, the update) and the mean reward.
  * The reward: the peers cannot import sspo_jax, so `benchmarks/peers/answer_check.py` repeats
    sspo_jax's ``math`` reward (last ``\\boxed{}`` vs the gold via math-verify, installed in
    each peer venv at sspo_jax's pin) in the peer's process; a unit test checks the two agree.

``peers.json`` (``--out``, default benchmarks/results) holds the machine, the load average at
the start, every setting (`MATCHED` / `UNMATCHED`), and per preset and framework the median,
min and max seconds per step and per phase over steps ``--skip-steps + 1 .. --steps`` (the first
steps compile), the reward curve and the mean reward over the measured steps with its standard
error; then the ratios ``trl_step / sspo_jax_step`` and ``tunix_step / sspo_jax_step`` (> 1:
sspo_jax is faster) against the targets 1.2 and 1.5. A ratio is refused (``ratios_refused``
with the reason, see `load_refusal` and `reward_refusal`) when the 1-minute load average at the
start exceeds ``--max-load`` (default 0.5 per CPU core: another process on a 2-core machine
degrades both PyTorch's and XLA's thread pools), or when the two frameworks' mean rewards differ
beyond noise, ``|mean_a - mean_b| > 3 sqrt(se_a^2 + se_b^2)`` with se the standard error of the
per-step mean rewards (then they did not run the same job). The jobs' own records, specs, the
prompt file and their logs are kept in ``<out>/peers/``. Run it on a quiet machine::

    make bench-peers        # = .venv/bin/python benchmarks/bench_peers.py --presets grpo,sspo --readme
    .venv/bin/python benchmarks/bench_peers.py [--frameworks sspo_jax,trl,tunix] [--steps 20]
        [--skip-steps 2] [--presets grpo,sspo] [--out benchmarks/results] [--max-load 1.0] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
from common import RESULTS_DIR, write_json  # noqa: E402

PEERS_DIR = REPO / ".peers"
PEER_SCRIPTS = BENCH_DIR / "peers"
FRAMEWORKS = ("sspo_jax", "trl", "tunix")
TARGETS = {"trl": 1.2, "tunix": 1.5}
"""Targets for ``<peer>_step / sspo_jax_step`` on the GRPO preset (the SSPO comparison is reported)."""
PHASES = ("generate_and_reward_s", "extra_forward_s", "update_s")
UPDATE_UTILISATION_TARGET = 0.6
"""Target for the sspo_jax update's model FLOPs over the valid tokens / the measured matmul peak."""

# Installed stage by stage (one pip call each). torch goes first and alone so that pip keeps
# the CPU build instead of resolving a CUDA torch for TRL.
PEER_REQUIREMENTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "trl": (("torch==2.13.0",),
            ("trl==1.16.0", "transformers==5.24.0", "accelerate==1.15.0", "datasets==5.2.0", "math-verify==0.9.0")),
    "tunix": (("google-tunix==0.1.7", "jax==0.10.2", "jaxlib==0.10.2", "flax==0.12.8", "optax==0.2.8",
               "safetensors<0.8", "math-verify==0.9.0"),),
}
STAMP = ".bench-peers-stamp"

PRESETS = {
    # preset -> (sspo_jax config, the peers' variant)
    "grpo": ("configs/tiny_grpo.yaml", "grpo"),
    "sspo": ("configs/tiny_sspo.yaml", "gspo"),
}
SMOKE_OVERRIDES = ["data.batch_size=4", "algorithm.group_size=4"]
# what a preset's sspo_jax config must change to be the peers' job: configs/tiny_sspo.yaml makes
# 4 minibatch updates per rollout, the peers one (num_iterations 1)
PRESET_OVERRIDES = {"grpo": [], "sspo": ["algorithm.num_minibatches=1"]}

MATCHED = [
    "weights: every framework loads sspo_jax/assets/tiny-arith (fp32, tied embeddings)",
    "prompts: the same prompt texts and gold answers, in the same order, from sspo_jax's PromptBatcher",
    "batch: 32 prompts x 8 responses = 256 rows per step, one optimizer update per step on the gradient of all "
    "256 rows (sspo_jax algorithm.num_minibatches=1; TRL per_device_train_batch_size=256, "
    "gradient_accumulation_steps=1; Tunix mini batch = 32 prompts)",
    "sampling: 48 new tokens max, temperature 1, top_p 1, no top_k, stop at EOS (id 0)",
    "optimizer: AdamW b1 0.9 b2 0.999 eps 1e-8, weight decay 0, lr 3e-4 with linear warmup from 0 over 2 updates "
    "then constant, global-norm clipping at 1 (TRL: lr_scheduler_type=constant_with_warmup, warmup_steps=2)",
    "GRPO: group z-score advantages with the unbiased group std, clip eps 0.2 (SSPO preset: 0.2 / 0.28), "
    "k3 KL to the initial policy with beta 0.04 (TRL's only estimator; Tunix kl_loss_mode='low_var_kl'), "
    "seq-mean-token-mean aggregation (TRL loss_type='grpo'; Tunix loss_agg_mode='sequence-mean-token-mean'), "
    "num_iterations 1 (no old-policy forward)",
    "SSPO vs GSPO: token-mean aggregation (TRL loss_type='dapo', Tunix 'token-mean'), beta 0 (no reference model)",
    "reward: sspo_jax's math check (last \\boxed{} vs gold, math-verify 0.9.0) in every framework",
    "precision: fp32 everywhere (TRL bf16=False), no gradient checkpointing, no vLLM, CPU only",
    "frameworks run one after the other, each in its own process",
]
UNMATCHED = [
    "gradient accumulation: sspo_jax sums the 256 rows' gradient over 64-row micro-batches (train.micro_batch_size "
    "of configs/tiny_base.yaml, which keeps the activations in the CPU's caches); TRL and Tunix run each forward "
    "and backward on all 256 rows at once (TRL gradient_accumulation_steps=1, Tunix train_micro_batch_size = "
    "32 prompts)",
    "sampling implementation: sspo_jax's jitted generate over prompt buckets (32/64), TRL's transformers "
    "generate() (dynamic KV cache), Tunix's Sampler (prompts left-padded to max(64, longest) with a fixed-size "
    "KV cache); the random streams differ, so the responses (and rewards) are samples of the same distribution, "
    "not the same tokens",
    "reward execution: sspo_jax verifies in a pool of rewards.workers=2 processes; TRL and Tunix call the same "
    "check in-process (Tunix from its data-preparation thread, where math-verify's signal timeout is off)",
    "advantage eps: sspo_jax 1e-6 and Tunix 1e-6 on the group std, TRL 1e-4",
    "GSPO is not SSPO: TRL's and Tunix's sequence-level ratios stand in for SSPO's subsentence ratios with "
    "entropy-scaled clip bounds (the issue's comparison); the SSPO step also pays for segmentation and a no-grad "
    "forward for the behaviour policy's entropies (its extra_forward phase), and TRL/Tunix use the plain "
    "0.2 / 0.28 bounds on a sequence ratio",
    "Tunix's rollout seed is one fixed PRNG key; the job folds a call counter into it so every step samples "
    "with a fresh key",
    "whole-step boundaries: sspo_jax Trainer.step (time/step); TRL from on_step_begin to on_step_end (the HF "
    "Trainer fetches the step's prompt batch just before); Tunix one RLLearner._run_global_step",
]


# ---- pure rules: aggregation and refusals ------------------------------------------------------

def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of `values` (seconds)."""
    return {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values)}


def summarize_records(records: list[dict[str, Any]], skip_steps: int) -> dict[str, Any]:
    """Medians per step and per phase over the records after the first `skip_steps` steps.

    Args:
      records: one dict per optimizer step with ``step``, ``step_s``, the `PHASES` and
        ``reward_mean`` (and optionally ``responses``, the responses that step scored).
      skip_steps: the first steps left out of the timings (compilation, warm-up).
    Returns:
      ``measured_steps``, ``step`` and each phase as `spread`, the reward curve of every step,
      ``reward_mean`` and ``reward_se`` over the measured steps (`reward_standard_error`).
    Raises:
      ValueError: no step is left after skipping.
    """
    records = sorted(records, key=lambda r: r["step"])
    measured = [r for r in records if r["step"] > skip_steps]
    if not measured:
        raise ValueError(f"no step after the first {skip_steps} to measure ({len(records)} step(s) recorded)")
    rewards = [float(r["reward_mean"]) for r in measured]
    responses = sum(int(r.get("responses", 0)) for r in measured)
    out: dict[str, Any] = {"measured_steps": [r["step"] for r in measured],
                           "step": spread([r["step_s"] for r in measured])}
    for phase in PHASES:
        out[phase[:-2]] = spread([r[phase] for r in measured])
    out["reward_curve"] = [float(r["reward_mean"]) for r in records]
    out["reward_mean"] = statistics.fmean(rewards)
    out["reward_se"] = reward_standard_error(rewards, responses)
    out["responses_measured"] = responses
    if all("update_model_flops" in r for r in measured):
        rates = [r["update_model_flops"] / r["update_s"] for r in measured]
        out["update_work"] = {
            "model_flops_per_s_median": statistics.median(rates),
            "valid_tokens_mean": statistics.fmean(r["update_valid_tokens"] for r in measured),
            "computed_tokens_mean": statistics.fmean(r["update_computed_tokens"] for r in measured),
            "note": "model FLOPs of one forward + backward over the valid (non-padding) tokens "
                    "(common.rows_model_flops) / update seconds; computed = rows x trimmed width"}
    return out


def update_utilisation(summary: dict[str, Any], peak: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The update's median model FLOP/s over the valid tokens as a fraction of the matmul peak the
    job measured in its own process (``matmul_peak``), with the target; None without both."""
    work = summary.get("update_work")
    if not work or not peak:
        return None
    frac = work["model_flops_per_s_median"] / peak["flops_per_s_median"]
    return {"fraction_of_peak": frac, "matmul_peak_flops_per_s": peak["flops_per_s_median"],
            "padding_computed_frac": 1 - work["valid_tokens_mean"] / work["computed_tokens_mean"],
            "target": f">= {100 * UPDATE_UTILISATION_TARGET:g} %", "met": frac >= UPDATE_UTILISATION_TARGET}


def reward_standard_error(step_means: list[float], responses: int = 0) -> float:
    """The standard error of the mean reward over the measured steps.

    With two or more steps: ``stdev(step means) / sqrt(steps)`` (prompt difficulty and learning
    both count as noise). With one step: the binomial ``sqrt(p (1 - p) / responses)`` of its 0/1
    rewards, or infinity when the response count is unknown.
    """
    n = len(step_means)
    if n >= 2:
        return statistics.stdev(step_means) / math.sqrt(n)
    if n == 1 and responses > 0:
        p = min(max(step_means[0], 0.0), 1.0)
        return math.sqrt(p * (1 - p) / responses)
    return math.inf


def load_refusal(load_1min: float, max_load: float) -> Optional[str]:
    """The reason to refuse every ratio when the 1-minute load average at the start was over
    `max_load`, else None."""
    if load_1min > max_load:
        return (f"machine loaded at the start: 1-minute load average {load_1min:.2f} > --max-load {max_load:.2f}; "
                "rerun on a quiet machine")
    return None


def reward_refusal(a: dict[str, Any], b: dict[str, Any], z: float = 3.0, names: tuple[str, str] = ("a", "b")
                   ) -> Optional[str]:
    """The reason to refuse a ratio when the mean rewards of two runs disagree beyond noise:
    ``|mean_a - mean_b| > z * sqrt(se_a^2 + se_b^2)`` (`summarize_records`' ``reward_mean`` and
    ``reward_se``); None when they agree."""
    diff = abs(a["reward_mean"] - b["reward_mean"])
    noise = math.sqrt(a["reward_se"] ** 2 + b["reward_se"] ** 2)
    if not math.isfinite(diff) or diff > z * noise:
        return (f"mean rewards disagree beyond noise: {names[0]} {a['reward_mean']:.3f} +- {a['reward_se']:.3f}, "
                f"{names[1]} {b['reward_mean']:.3f} +- {b['reward_se']:.3f} "
                f"(difference {diff:.3f} > {z:g} x {noise:.3f})")
    return None


def compare(base: dict[str, Any], peer: dict[str, Any], peer_name: str, *, target: Optional[float],
            refused: Optional[str], z: float = 3.0) -> dict[str, Any]:
    """The ratio ``peer_step / sspo_jax_step`` (medians; > 1 means sspo_jax is faster) with its
    spread, per-phase ratios and the target, or ``{"ratios_refused": reason}`` when `refused`
    (the load check) or `reward_refusal` gives a reason."""
    reason = refused or reward_refusal(peer, base, z, (peer_name, "sspo_jax"))
    if reason:
        return {"ratios_refused": reason}
    ratio = peer["step"]["median_s"] / base["step"]["median_s"]
    out: dict[str, Any] = {
        "ratio": ratio,
        "min": peer["step"]["min_s"] / base["step"]["max_s"], "max": peer["step"]["max_s"] / base["step"]["min_s"],
        "per_phase": {p[:-2]: (peer[p[:-2]]["median_s"] / base[p[:-2]]["median_s"]
                               if base[p[:-2]]["median_s"] > 0 else None) for p in PHASES},
    }
    if target is not None:
        out.update(target=f">= {target:g}", met=ratio >= target)
    return out


# ---- peer virtualenvs --------------------------------------------------------------------------

def venv_python(name: str, root: Path = PEERS_DIR) -> Path:
    return root / name / "bin" / "python"


def stamp_text(name: str) -> str:
    return json.dumps({"python": sys.version.split()[0], "stages": PEER_REQUIREMENTS[name]}, indent=1)


def ensure_venv(name: str, root: Path = PEERS_DIR, echo=print) -> Path:
    """Builds ``root/name`` with `PEER_REQUIREMENTS[name]` unless its stamp already names the same
    pins; returns its python. Each stage is one ``pip install`` (the first run takes minutes)."""
    venv = root / name
    py = venv_python(name, root)
    stamp = venv / STAMP
    want = stamp_text(name)
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        return py
    t0 = time.perf_counter()
    if not py.exists():
        echo(f"[peers] creating {venv}")
        subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True)
    for stage in PEER_REQUIREMENTS[name]:
        echo(f"[peers] {name}: pip install {' '.join(stage)}")
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", *stage], check=True)
    stamp.write_text(want)
    echo(f"[peers] {name} ready in {time.perf_counter() - t0:.0f} s")
    return py


def _base_python() -> str:
    """The interpreter the main venv was made from (a venv of a venv would link to this venv)."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(base) if base.exists() else sys.executable


# ---- the job ------------------------------------------------------------------------------------

def load_job_config(preset: str, steps: int, smoke: bool):
    """sspo_jax's `TrainConfig` of `preset` for `steps` steps (smoke sizes with `smoke`), and the
    config overrides the sspo_jax job must apply to match it."""
    from sspo_jax.train.config import load_config

    overrides = [*PRESET_OVERRIDES[preset], *(SMOKE_OVERRIDES if smoke else [])]
    return load_config(REPO / PRESETS[preset][0], [*overrides, f"train.steps={steps}"]), overrides


def export_prompts(cfg, steps: int, path: Path) -> list[dict[str, Any]]:
    """Writes the first `steps` prompt batches of sspo_jax's data pipeline (one
    ``{"step", "prompt", "gold"}`` line per prompt, G-fold repetition removed) to `path`."""
    from sspo_jax.data import PromptBatcher, build_source
    from sspo_jax.train.build import load_tokenizer
    from sspo_jax.train.config import resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(cfg.model.tokenizer_path or cfg.model.path))
    batcher = PromptBatcher(build_source(cfg.data), tokenizer, cfg.data)
    rows = []
    for step in range(1, steps + 1):
        batch = batcher.next_batch()
        g = batch.group_size
        rows.extend({"step": step, "prompt": p, "gold": a} for p, a in zip(batch.prompts[::g], batch.golds[::g]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def job_spec(preset: str, cfg, overrides: list[str], steps: int, prompts: Path) -> dict[str, Any]:
    """The settings every framework's job reads, all taken from sspo_jax's resolved config."""
    from sspo_jax.train.config import resolve_model_path

    alg, opt, smp = cfg.algorithm, cfg.optim, cfg.sampling
    return {
        "preset": preset, "peer_variant": PRESETS[preset][1], "steps": steps, "seed": cfg.train.seed,
        "model_dir": str(resolve_model_path(cfg.model.path)), "prompts": str(prompts),
        "batch_size": cfg.data.batch_size, "group_size": alg.group_size, "max_prompt_len": cfg.data.max_prompt_len,
        "max_new_tokens": smp.max_new_tokens, "temperature": smp.temperature,
        "lr": opt.lr, "warmup_steps": opt.warmup_steps, "max_grad_norm": opt.max_grad_norm, "b1": opt.b1,
        "b2": opt.b2, "adam_eps": opt.eps, "weight_decay": opt.weight_decay,
        "eps_low": alg.eps_low, "eps_high": alg.eps_high, "kl_beta": alg.kl_beta, "kl_estimator": alg.kl_estimator,
        "loss_agg_mode": alg.loss_agg_mode, "adv_eps": alg.adv_eps,
        "sspo_jax_config": PRESETS[preset][0], "sspo_jax_overrides": overrides,
    }


def job_env() -> dict[str, str]:
    """The jobs' environment: CPU, one XLA host device (no simulated devices from a test's
    XLA_FLAGS), offline Hugging Face, unbuffered output."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               TF_CPP_MIN_LOG_LEVEL="2", WANDB_DISABLED="true", DISABLE_MLFLOW_INTEGRATION="TRUE")
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    env.pop("VIRTUAL_ENV", None)
    return env


def run_job(framework: str, spec_path: Path, out_path: Path, python: Path, timeout_s: float,
            log_path: Optional[Path] = None) -> dict[str, Any]:
    """Runs one framework's job script in its own process; returns its result JSON."""
    script = PEER_SCRIPTS / {"sspo_jax": "sspo_jax_job.py", "trl": "trl_grpo.py", "tunix": "tunix_grpo.py"}[framework]
    cmd = [str(python), str(script), "--spec", str(spec_path), "--out", str(out_path)]
    out_path.unlink(missing_ok=True)  # never read a previous run's records
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=timeout_s)
    if log_path is not None:
        log_path.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{framework} job failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    result = json.loads(out_path.read_text())
    result["wall_s"] = time.perf_counter() - t0
    return result


# ---- main ---------------------------------------------------------------------------------------

def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(allowed))
    if unknown or not names:
        raise SystemExit(f"error: unknown {what} {unknown}; choose from {list(allowed)}")
    return names


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma list of sspo_jax,trl,tunix")
    ap.add_argument("--presets", default="grpo", help="comma list of grpo,sspo (sspo: SSPO vs GSPO)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per framework (default 20; smoke 3)")
    ap.add_argument("--skip-steps", type=int, default=None,
                    help="first steps left out of the medians, which compile (default 2; smoke 1)")
    ap.add_argument("--out", default=str(RESULTS_DIR), help="output directory (writes peers.json)")
    ap.add_argument("--max-load", type=float, default=None,
                    help="refuse ratios when the 1-minute load average at the start exceeds this "
                         "(default 0.5 per CPU core)")
    ap.add_argument("--z", type=float, default=3.0, help="reward agreement: standard errors allowed")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per framework job")
    ap.add_argument("--setup-only", action="store_true", help="build the peer venvs and exit")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes (4 prompts x 4 responses; default 3 steps, 1 skipped) to check the jobs")
    ap.add_argument("--readme", action="store_true", help="rebuild the benchmark summary and the README table")
    args = ap.parse_args(argv)
    frameworks = _names(args.frameworks, FRAMEWORKS, "framework(s)")
    presets = _names(args.presets, tuple(PRESETS), "preset(s)")
    if args.steps is None:
        args.steps = 3 if args.smoke else 20
    if args.skip_steps is None:
        args.skip_steps = 1 if args.smoke else 2
    if args.skip_steps >= args.steps:
        raise SystemExit(f"error: --skip-steps {args.skip_steps} leaves no step of --steps {args.steps} to measure")
    load_start = os.getloadavg()
    max_load = args.max_load if args.max_load is not None else 0.5 * (os.cpu_count() or 1)

    pythons = {"sspo_jax": Path(sys.executable)}
    for name in frameworks:
        if name != "sspo_jax":
            pythons[name] = ensure_venv(name)
    if args.setup_only:
        return {"venvs": {k: str(v) for k, v in pythons.items()}}

    out = Path(args.out)
    work = out / "peers"
    work.mkdir(parents=True, exist_ok=True)
    refused_load = load_refusal(load_start[0], max_load)
    print(f"[peers] load average at start {load_start[0]:.2f} (max {max_load:.2f}); frameworks {frameworks}, "
          f"presets {presets}, {args.steps} steps ({args.skip_steps} skipped)", flush=True)
    payload: dict[str, Any] = {
        "args": {k: v for k, v in vars(args).items()}, "frameworks": frameworks,
        "load_avg_at_start": list(load_start), "max_load": max_load, "load_ok": refused_load is None,
        "reward_agreement": f"|mean_a - mean_b| <= {args.z:g} * sqrt(se_a^2 + se_b^2), se = stdev of the per-step "
                            "mean rewards / sqrt(measured steps) (binomial over the responses for one step)",
        "targets": {f"{k}_step / sspo_jax_step": f">= {v:g}" for k, v in TARGETS.items()},
        "matched": MATCHED, "unmatched": UNMATCHED, "peer_requirements": PEER_REQUIREMENTS, "presets": {},
    }
    if refused_load:
        payload["ratios_refused"] = refused_load
    for preset in presets:
        cfg, overrides = load_job_config(preset, args.steps, args.smoke)
        prompts = work / f"prompts_{preset}.jsonl"
        export_prompts(cfg, args.steps, prompts)
        spec = job_spec(preset, cfg, overrides, args.steps, prompts)
        spec_path = work / f"spec_{preset}.json"
        spec_path.write_text(json.dumps(spec, indent=2) + "\n")
        entry: dict[str, Any] = {"spec": spec, "frameworks": {}, "ratios": {}}
        for name in frameworks:
            print(f"[peers] {preset}: {name} ...", flush=True)
            load_before = os.getloadavg()
            res_path = work / f"{name}_{preset}.json"
            try:
                result = run_job(name, spec_path, res_path, pythons[name], args.timeout,
                                 work / f"{name}_{preset}.log")
                summary = summarize_records(result["records"], args.skip_steps)
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as err:  # keep the other frameworks' runs
                entry["frameworks"][name] = {"error": str(err)[-3000:]}
                payload.setdefault("failed", []).append(f"{preset}/{name}")
                print(f"[peers] {preset}: {name} FAILED: {err}", file=sys.stderr, flush=True)
                continue
            summary.update(load_avg_before=list(load_before), wall_s=result["wall_s"], records_file=res_path.name,
                           **{k: v for k, v in result.items() if k not in ("records", "framework", "preset", "wall_s")})
            util = update_utilisation(summary, result.get("matmul_peak"))
            if util:
                summary["update_utilisation"] = util
            entry["frameworks"][name] = summary
            print(f"[peers] {preset}: {name} median step {summary['step']['median_s']:.3f} s (generate+reward "
                  f"{summary['generate_and_reward']['median_s']:.3f}, extra forwards "
                  f"{summary['extra_forward']['median_s']:.3f}, update {summary['update']['median_s']:.3f}), "
                  f"reward {summary['reward_mean']:.3f} +- {summary['reward_se']:.3f}", flush=True)
        base = entry["frameworks"].get("sspo_jax")
        for name in [f for f in frameworks if f != "sspo_jax"]:
            key = f"{name}_step / sspo_jax_step"
            failed = [f for f in ("sspo_jax", name) if "error" in entry["frameworks"].get(f, {})]
            if base is None or failed:
                entry["ratios"][key] = {"ratios_refused": f"{' and '.join(failed)} failed" if failed
                                        else "sspo_jax was not run"}
                continue
            entry["ratios"][key] = compare(base, entry["frameworks"][name], name, refused=refused_load, z=args.z,
                                           target=TARGETS.get(name) if preset == "grpo" else None)
            print(f"[peers] {preset}: {key} = {json.dumps(entry['ratios'][key])}", flush=True)
        payload["presets"][preset] = entry
    payload["load_avg_at_end"] = list(os.getloadavg())
    path = write_json("peers", payload, out)
    print(f"[peers] wrote {path}")
    if args.readme:
        import run as bench_run

        bench_run.main(["--summarize-only", "--out", str(out), "--readme"])
    return {**payload, "path": str(path)}


if __name__ == "__main__":  # the sspo_jax job's reward pool spawns workers that re-import scripts
    sys.exit(1 if main().get("failed") else 0)
