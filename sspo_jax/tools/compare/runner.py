"""Runs every (label, seed) of a comparison as its own ``sspo-jax train`` subprocess, N at a time.

Each run writes ``RUNS_ROOT/<label>/seed<k>/`` (a normal run directory) plus ``compare.json``
(the runner's record: command, status, exit code, wall time of each attempt, stderr tail) and the
subprocess's ``compare_stdout.log`` / ``compare_stderr.log``. Running the comparison again:

- a finished run (its summary.json and metrics reach ``train.steps``) is skipped;
- an interrupted run is started again on the same directory, and the trainer resumes from its
  newest checkpoint;
- a failed run (non-zero exit, e.g. the trainer's stop after consecutive non-finite steps) is kept
  as failed; ``retry_failed`` deletes its directory and trains it from scratch;
- a directory whose config.yaml differs from the run's resolved config is an error (edit the spec
  and reuse old runs by mistake is the failure this prevents).

Threads with ``jobs > 1``: each subprocess is pinned (CPU affinity) to its own share of the CPUs
this process may use, and OMP/MKL/OpenBLAS thread counts are set to that share. On jax 0.10.2,
XLA's ``--xla_cpu_multi_thread_eigen=false`` does not bound the CPU runtime's thread pool, while
the pool's size does follow the process's CPU affinity.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from sspo_jax.errors import ConfigError
from sspo_jax.tools.compare.spec import CompareSpec, run_overrides
from sspo_jax.tools.compare.summary import FAILED, FINISHED, INCOMPLETE, MISSING

MARKER = "compare.json"
STDOUT_LOG, STDERR_LOG = "compare_stdout.log", "compare_stderr.log"
TAIL_LINES = 25
# Config sections that do not change what a run computes (not compared when reusing a directory).
_IGNORED_SECTIONS = ("run_dir", "logging")


@dataclasses.dataclass
class RunTask:
    """One (label, seed) training subprocess."""

    label: str
    seed: int
    config: str
    overrides: list[str]
    run_dir: Path
    steps: int
    resolved: dict[str, Any]  # the resolved train config (config_to_mapping), for the reuse check

    @property
    def argv(self) -> list[str]:
        """The `sspo-jax train` command line of this run (without the child environment)."""
        sets = [x for o in self.overrides for x in ("--set", o)]
        return [sys.executable, "-m", "sspo_jax.cli", "train", "--config", self.config,
                "--run-dir", str(self.run_dir), "--no-progress", *sets]

    @property
    def name(self) -> str:
        """'label seed k', as progress lines print it."""
        return f"{self.label} seed {self.seed}"


def command_line(task: RunTask) -> str:
    """The shell command of a task (with ``python`` for the interpreter), for the report."""
    import shlex

    return " ".join(shlex.quote(a) for a in ["python", *task.argv[1:]])


def plan(spec: CompareSpec, runs_root: Path, extra: tuple[str, ...] = ()) -> list[RunTask]:
    """The tasks of a spec, seed-major so that partial results cover every label; validates every config."""
    from sspo_jax.train.config import config_to_mapping, load_config

    tasks = []
    for seed in spec.seeds:
        for run in spec.runs:
            overrides = run_overrides(spec, run, seed, extra)
            run_dir = runs_root / run.label / f"seed{seed}"
            try:
                cfg = load_config(run.config, [*overrides, f"run_dir={run_dir}"])
            except ConfigError as err:
                raise ConfigError(f"{spec.path or spec.name}: run {run.label!r} ({run.config}): {err}") from None
            tasks.append(RunTask(run.label, seed, run.config, overrides, run_dir, cfg.train.steps,
                                 _comparable(config_to_mapping(cfg))))
    return tasks


def _comparable(mapping: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in mapping.items() if k not in _IGNORED_SECTIONS}))


# ---- state of a run directory ---------------------------------------------------------------------

def read_marker(run_dir: Path) -> dict[str, Any]:
    """The run directory's compare.json marker (status, return code, wall time); {} when absent or unreadable."""
    path = run_dir / MARKER
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError):
        return {}


def _write_marker(run_dir: Path, marker: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / MARKER)


def is_finished(run_dir: Path, steps: int) -> bool:
    """The trainer wrote its summary for `steps` and metrics.jsonl holds that step."""
    from sspo_jax.tools.compare.summary import read_records

    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if summary.get("steps") != steps:
        return False
    records, _ = read_records(run_dir)
    return any(int(r["step"]) == steps for r in records)


def run_status(run_dir: Path, steps: int) -> str:
    """FINISHED, FAILED (as the runner recorded it), INCOMPLETE (started, not done) or MISSING."""
    if is_finished(run_dir, steps):
        return FINISHED
    if read_marker(run_dir).get("status") == FAILED:
        return FAILED
    if (run_dir / "metrics.jsonl").is_file() or (run_dir / "checkpoints").is_dir():
        return INCOMPLETE
    return MISSING


def check_reusable(task: RunTask) -> None:
    """A run directory that exists must hold the same resolved config as the task."""
    import yaml

    path = task.run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = _comparable(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except yaml.YAMLError:
        return
    if saved != task.resolved:
        diff = sorted(_diff_keys(saved, task.resolved))
        raise ConfigError(
            f"run directory {str(task.run_dir)!r} ({task.name}) was trained with another config (differs in "
            f"{diff[:8]}{' ...' if len(diff) > 8 else ''}): delete it to train it again with the spec, or pass "
            "another --runs-dir")


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of a log file ('' when it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def error_line(stderr_tail: str) -> Optional[str]:
    """The most telling line of a failure's stderr: the last ``error:`` or exception line."""
    lines = [ln.strip() for ln in stderr_tail.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:") or "Error" in ln.split(":", 1)[0]:
            return ln[:300]
    return lines[-1][:300] if lines else None


# ---- CPU shares -----------------------------------------------------------------------------------

def cpu_shares(jobs: int) -> list[Optional[list[int]]]:
    """The CPUs of each of `jobs` slots (None = no pinning with one job)."""
    if jobs <= 1:
        return [None]
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return [None] * jobs
    n = len(cpus)
    if n >= jobs:
        return [cpus[i * n // jobs:(i + 1) * n // jobs] for i in range(jobs)]
    return [[cpus[i % n]] for i in range(jobs)]


def child_env(share: Optional[list[int]]) -> dict[str, str]:
    """The environment of a training subprocess; with `share` (CPU ids) the math libraries' thread counts are set to its size."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["TOKENIZERS_PARALLELISM"] = "false"
    if share is not None:
        threads = str(len(share))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = threads
    return env


# ---- the scheduler --------------------------------------------------------------------------------

@dataclasses.dataclass
class _Running:
    task: RunTask
    proc: subprocess.Popen
    slot: int
    start: float
    out: Any
    err: Any


def run_tasks(tasks: list[RunTask], *, jobs: int = 1, retry_failed: bool = False,
              echo: Callable[[str], None] = print, poll_s: float = 0.5) -> dict[tuple[str, int], dict[str, Any]]:
    """Runs the tasks that are not finished, `jobs` at a time; returns each task's marker record.

    A failing subprocess is recorded (status, exit code, stderr tail), never raised; Ctrl-C stops the
    running subprocesses, marks them interrupted (they resume next time) and re-raises.
    """
    jobs = max(1, int(jobs))
    results: dict[tuple[str, int], dict[str, Any]] = {}
    todo: list[RunTask] = []
    for task in tasks:
        check_reusable(task)
    total = len(tasks)
    done = 0
    for task in tasks:
        status = run_status(task.run_dir, task.steps)
        marker = read_marker(task.run_dir)
        if status == FAILED and retry_failed:
            shutil.rmtree(task.run_dir)
            status, marker = MISSING, {}
        if status in (FINISHED, FAILED):
            done += 1
            results[(task.label, task.seed)] = {**marker, "status": status}
            echo(f"[{done}/{total}] {task.name}: already {status}, skipped")
        else:
            todo.append(task)

    shares = cpu_shares(jobs)
    free = list(range(jobs))
    running: list[_Running] = []
    try:
        while todo or running:
            while todo and free:
                task = todo.pop(0)
                slot = free.pop(0)
                running.append(_start(task, slot, shares[slot % len(shares)], jobs))
            time.sleep(poll_s)
            for r in list(running):
                rc = r.proc.poll()
                if rc is None:
                    continue
                running.remove(r)
                free.append(r.slot)
                done += 1
                rec = _finish(r, rc)
                results[(r.task.label, r.task.seed)] = rec
                echo(f"[{done}/{total}] {r.task.name}: {_describe(r.task, rec)}")
    except BaseException:
        for r in running:
            r.proc.terminate()
        for r in running:
            try:
                r.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()
            _finish(r, r.proc.returncode, interrupted=True)
        raise
    return results


def _start(task: RunTask, slot: int, share: Optional[list[int]], jobs: int) -> _Running:
    task.run_dir.mkdir(parents=True, exist_ok=True)
    marker = read_marker(task.run_dir)
    attempts = list(marker.get("attempts", []))
    marker = {"label": task.label, "seed": task.seed, "command": command_line(task), "status": "running",
              "attempts": attempts, "jobs": jobs, "cpus": share}
    _write_marker(task.run_dir, marker)
    out = open(task.run_dir / STDOUT_LOG, "a", encoding="utf-8")  # noqa: SIM115 - closed in _finish
    err = open(task.run_dir / STDERR_LOG, "a", encoding="utf-8")  # noqa: SIM115
    for f in (out, err):
        f.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {command_line(task)}\n")
        f.flush()
    proc = subprocess.Popen(task.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=child_env(share))
    if share is not None:  # set while the child's interpreter starts, before it creates any thread
        try:
            os.sched_setaffinity(proc.pid, share)
        except OSError:
            pass
    return _Running(task, proc, slot, time.perf_counter(), out, err)


def _finish(r: _Running, rc: Optional[int], interrupted: bool = False) -> dict[str, Any]:
    wall = time.perf_counter() - r.start
    r.out.close()
    r.err.close()
    marker = read_marker(r.task.run_dir)
    attempts = [*marker.get("attempts", []), {"returncode": rc, "wall_time_s": round(wall, 3),
                                              "interrupted": interrupted}]
    stderr_tail = tail(r.task.run_dir / STDERR_LOG)
    if interrupted:
        status = INCOMPLETE
    elif rc == 0 and is_finished(r.task.run_dir, r.task.steps):
        status = FINISHED
    else:
        status = FAILED
    marker.update({"status": status, "returncode": rc, "attempts": attempts,
                   "wall_time_s": round(sum(a["wall_time_s"] for a in attempts), 3)})
    if status == FAILED:
        if rc == 0:  # exit 0 without the final step: say so rather than quote an unrelated line
            marker["error"] = f"exited 0 before step {r.task.steps}"
        else:
            marker["error"] = error_line(stderr_tail) or f"exit code {rc}"
        marker["stderr_tail"] = stderr_tail
    else:
        marker.pop("error", None)
        marker.pop("stderr_tail", None)
    _write_marker(r.task.run_dir, marker)
    return marker


def _describe(task: RunTask, rec: dict[str, Any]) -> str:
    wall = rec.get("wall_time_s") or 0.0
    if rec["status"] == FAILED:
        return f"FAILED (exit {rec.get('returncode')}) after {wall:.0f} s: {rec.get('error')}"
    try:
        s = json.loads((task.run_dir / "summary.json").read_text(encoding="utf-8"))
        acc = f", held-out accuracy {s['accuracy_before']:.3f} -> {s['accuracy_after']:.3f}"
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        acc = ""
    return f"finished in {wall:.0f} s{acc}"
