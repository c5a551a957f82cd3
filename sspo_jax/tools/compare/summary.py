"""summary.json of a comparison: the metric series of every (label, seed) run, per-seed verdicts
(final and best accuracy, steps to the threshold, collapse) and per-label aggregates.

Everything here is plain Python over lists of numbers so that the report and the plots can be
rebuilt from summary.json alone. In the JSON, a value that was logged as NaN or infinite is the
string ``"nan"``, ``"inf"`` or ``"-inf"`` (as in metrics.jsonl) and a value not logged is null.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Optional

from sspo_jax.tools.compare.spec import CollapseRule, CompareSpec

FORMAT_VERSION = 1

# Per-step series kept for every run (the report's plots and means use these).
STEP_KEYS = ("accuracy", "reward/mean", "policy/clip_frac_low", "policy/clip_frac_high", "old_entropy_mean",
             "response_length/mean", "policy/loss", "policy/grad_norm", "skipped_updates", "time/step")
# Evaluation-step series kept besides the accuracy key.
EVAL_KEYS = ("eval/accuracy", "eval/sampled_accuracy", "eval/response_length")
# Keys whose non-finite values make a run collapsed (besides the accuracy key).
NONFINITE_KEYS = ("policy/loss", "policy/grad_norm")

# Status of one (label, seed) run.
FINISHED, FAILED, INCOMPLETE, MISSING = "finished", "failed", "incomplete", "missing"


# ---- numbers --------------------------------------------------------------------------------------

def as_float(value: Any) -> Optional[float]:
    """A metric value as a float (NaN/inf strings included); None when absent or not a number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def encode(value: Optional[float]) -> Any:
    """A float for JSON: non-finite values as strings, None as null."""
    if value is None:
        return None
    return value if math.isfinite(value) else str(value)


def finite(values: Iterable[Any]) -> list[float]:
    """The finite floats among `values` (None, NaN and inf dropped)."""
    out = []
    for v in values:
        f = as_float(v)
        if f is not None and math.isfinite(f):
            out.append(f)
    return out


def mean(values: Iterable[Any]) -> Optional[float]:
    """Mean of the finite values; None when there are none."""
    xs = finite(values)
    return sum(xs) / len(xs) if xs else None


def std(values: Iterable[Any]) -> Optional[float]:
    """Sample standard deviation (ddof = 1); 0 for a single value, None for none."""
    xs = finite(values)
    if not xs:
        return None
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def median_steps(steps: list[Optional[int]]) -> Optional[float]:
    """Median of steps-to-threshold over seeds, a seed that never reached it counting as infinitely
    many steps; None when the median itself is "not reached"."""
    if not steps:
        return None
    xs = sorted(math.inf if s is None else float(s) for s in steps)
    n = len(xs)
    mid = xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
    return None if math.isinf(mid) else mid


# ---- reading a run directory ----------------------------------------------------------------------

def read_records(run_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of RUN_DIR/metrics.jsonl and the number of unreadable lines (a torn last line after a kill)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return [], 0
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and "step" in rec:
            records.append(rec)
        else:
            bad += 1
    return records, bad


def extract_series(records: list[dict[str, Any]], accuracy_key: str) -> tuple[dict[str, list], dict[str, list]]:
    """(per-step series over steps >= 1, evaluation series over records holding `accuracy_key`),
    each ``{"step": [...], key: [...]}`` with values encoded for JSON."""
    by_step: dict[int, dict[str, Any]] = {}
    for rec in records:  # a replayed step (after a resume) keeps its last record
        by_step[int(rec["step"])] = rec
    steps = sorted(s for s in by_step if s >= 1)
    series: dict[str, list] = {"step": steps}
    for key in STEP_KEYS:
        series[key] = [encode(as_float(by_step[s].get(key))) for s in steps]
    eval_steps = sorted(s for s, r in by_step.items() if accuracy_key in r)
    evals: dict[str, list] = {"step": eval_steps}
    for key in dict.fromkeys((accuracy_key, *EVAL_KEYS)):
        evals[key] = [encode(as_float(by_step[s].get(key))) for s in eval_steps]
    return series, evals


# ---- verdicts -------------------------------------------------------------------------------------

def first_reach(eval_steps: list[int], accuracies: list[Any], threshold: float) -> Optional[int]:
    """The first evaluation step whose accuracy is >= threshold (0 = already before training); None = never."""
    for step, acc in zip(eval_steps, accuracies):
        a = as_float(acc)
        if a is not None and math.isfinite(a) and a >= threshold:
            return int(step)
    return None


def collapse_reason(status: str, eval_steps: list[int], accuracies: list[Any], rule: CollapseRule, *,
                    nonfinite: Iterable[str] = (), error: Optional[str] = None) -> Optional[str]:
    """Why a run counts as collapsed under `rule` (see `CollapseRule`), or None.

    Args:
      status: the run's status (FINISHED, FAILED, ...); a failed run is collapsed.
      eval_steps, accuracies: the evaluation series (step 0 first when the run evaluated before training).
      nonfinite: keys that logged a NaN or infinite value.
      error: the failure's last line, quoted in the reason.
    """
    if status == FAILED:
        return "failed" + (f": {error}" if error else "")
    bad = list(dict.fromkeys(nonfinite))
    if bad:
        return "non-finite " + ", ".join(f"`{k}`" for k in bad)
    pairs = [(s, as_float(a)) for s, a in zip(eval_steps, accuracies)]
    pairs = [(s, a) for s, a in pairs if a is not None]
    if len(pairs) < 2:
        return None
    initial = pairs[0][1]
    later = [a for _, a in pairs[1:]]
    last = later[-rule.last_evals:]
    line = initial - rule.margin
    if all(a < line for a in last):
        return (f"accuracy below {initial:.3f} - {rule.margin:g} = {line:.3f} at the last {len(last)} "
                f"evaluation{'s' if len(last) > 1 else ''} ({', '.join(f'{a:.3f}' for a in last)})")
    return None


def seed_result(seed: int, status: str, series: dict[str, list], evals: dict[str, list], spec: CompareSpec, *,
                wall_time_s: Optional[float] = None, run_dir: str = "", returncode: Optional[int] = None,
                error: Optional[str] = None, stderr_tail: str = "", unreadable_lines: int = 0) -> dict[str, Any]:
    """The per-seed record of summary.json: verdicts computed from the series."""
    key = spec.accuracy_key
    steps, accs = evals.get("step", []), evals.get(key, [])
    nonfinite = [k for k in (key, *NONFINITE_KEYS)
                 if any(v is not None and not math.isfinite(v)
                        for v in (as_float(x) for x in (accs if k == key else series.get(k, []))))]
    acc_values = [as_float(a) for a in accs]
    initial = acc_values[0] if acc_values and steps and steps[0] == 0 else None
    has_result = status in (FINISHED, FAILED, INCOMPLETE)
    final = acc_values[-1] if acc_values and has_result and steps[-1] > 0 else None
    best_pool = finite(a for s, a in zip(steps, accs) if s > 0)
    reason = collapse_reason(status, steps, accs, spec.collapse, nonfinite=nonfinite, error=error) \
        if status in (FINISHED, FAILED) else None
    skipped = finite(series.get("skipped_updates", []))
    return {
        "seed": seed, "status": status, "run_dir": run_dir, "returncode": returncode,
        "steps_done": series["step"][-1] if series.get("step") else 0,
        "wall_time_s": wall_time_s,
        "initial_accuracy": encode(initial), "final_accuracy": encode(final),
        "best_accuracy": max(best_pool) if best_pool else None,
        "steps_to_threshold": first_reach(steps, accs, spec.accuracy_threshold),
        "clip_frac_low_mean": mean(series.get("policy/clip_frac_low", [])),
        "clip_frac_high_mean": mean(series.get("policy/clip_frac_high", [])),
        "skipped_updates": sum(skipped) if skipped else 0.0,
        "nonfinite_keys": nonfinite,
        "collapsed": reason is not None, "collapse_reason": reason,
        "error": error, "stderr_tail": stderr_tail, "unreadable_metric_lines": unreadable_lines,
        "series": series, "evals": evals,
    }


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-label numbers of the report's table, over the label's seeds.

    final accuracy: mean and sample std (ddof 1) over runs that finished; best accuracy: mean over
    those runs of each run's best evaluation after step 0; clip fractions: mean over seeds of each
    run's mean over steps; steps to threshold: median over every seed with a result, "not reached"
    counting as infinite (None = the median is not reached); wall time: per run, mean and total.
    """
    done = [r for r in per_seed if r["status"] == FINISHED]
    judged = [r for r in per_seed if r["status"] in (FINISHED, FAILED)]
    finals = [r["final_accuracy"] for r in done]
    lows = finite(r["clip_frac_low_mean"] for r in judged)
    highs = finite(r["clip_frac_high_mean"] for r in judged)
    walls = finite(r["wall_time_s"] for r in per_seed)
    reach = [r["steps_to_threshold"] for r in judged]
    low, high = mean(lows), mean(highs)
    return {
        "seeds": len(per_seed), "finished": len(done), "failed": sum(r["status"] == FAILED for r in per_seed),
        "not_run": sum(r["status"] in (MISSING, INCOMPLETE) for r in per_seed),
        "collapsed": sum(bool(r["collapsed"]) for r in per_seed),
        "collapsed_seeds": [r["seed"] for r in per_seed if r["collapsed"]],
        "initial_accuracy_mean": mean(r["initial_accuracy"] for r in per_seed),
        "final_accuracy_mean": mean(finals), "final_accuracy_std": std(finals), "final_accuracy_n": len(finite(finals)),
        "best_accuracy_mean": mean(r["best_accuracy"] for r in done),
        "clip_frac_low_mean": low, "clip_frac_high_mean": high,
        "clip_frac_total_mean": (low + high) if low is not None and high is not None else None,
        "steps_to_threshold_median": median_steps(reach), "threshold_reached": sum(s is not None for s in reach),
        "threshold_judged": len(reach),
        "wall_time_s_mean": mean(walls), "wall_time_s_total": sum(walls) if walls else None,
    }


# ---- the whole summary ----------------------------------------------------------------------------

def machine_info(jobs: int) -> dict[str, Any]:
    """Where the runs ran: CPU, memory, library versions, the repository commit."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "jobs": jobs}
    try:
        info["cpus_available"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    info["versions"] = versions
    try:
        root = Path(__file__).resolve().parents[2]
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            info["git_commit"] = head.stdout.strip()
            info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def build_summary(spec: CompareSpec, per_label: dict[str, list[dict[str, Any]]], *, machine: dict[str, Any],
                  extra_overrides: tuple[str, ...] = (), commands: Optional[dict[str, str]] = None,
                  reused: Optional[dict[str, dict[str, Any]]] = None) -> dict[str, Any]:
    """The summary.json mapping: spec, machine, per label its seeds' records and the aggregate.

    `reused` maps the labels taken from an earlier summary to where they came from ("generated",
    "git_commit", "command"); those labels carry it as "reused_from" and keep their own command.
    """
    labels = []
    for run in spec.runs:
        seeds = per_label.get(run.label, [])
        origin = (reused or {}).get(run.label)
        entry = {"label": run.label, "config": run.config, "overrides": list(run.overrides),
                 "command": origin["command"] if origin else (commands or {}).get(run.label),
                 "aggregate": aggregate(seeds), "per_seed": seeds}
        if origin:
            entry["reused_from"] = {"generated": origin.get("generated"), "git_commit": origin.get("git_commit")}
        labels.append(entry)
    return {
        "format": FORMAT_VERSION,
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "spec": spec.to_mapping(),
        "quick_check_overrides": list(extra_overrides),
        "collapse_rule": spec.collapse.describe(spec.accuracy_key),
        "machine": machine,
        "labels": labels,
    }


def dumps(obj: Any, level: int = 0) -> str:
    """Strict JSON, indented by structure, with each list of scalars (a metric series) on one line."""
    pad, inner = " " * level, " " * (level + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {dumps(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in obj):
        return "[\n" + ",\n".join(inner + dumps(v, level + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False)


def write_summary(summary: dict[str, Any], out_dir: Path) -> Path:
    """Writes summary.json into `out_dir` atomically (temporary file, then rename); returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "summary.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(summary) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_summary(path: Path) -> dict[str, Any]:
    """Reads a summary.json written by `write_summary`; ConfigError naming the file when missing or malformed."""
    from sspo_jax.errors import ConfigError

    if not path.is_file():
        raise ConfigError(f"{path} does not exist: run the comparison (or --report-only over its runs) first")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT_VERSION:
        raise ConfigError(f"{path}: summary format {data.get('format')!r} is not {FORMAT_VERSION}; regenerate it")
    return data
