"""Plain-Python helpers shared by the peer benchmark's jobs (no JAX, no torch: every venv imports it).

A job reads the spec and the shared prompt file that `bench_peers.py` writes, times its phases
with a `PhaseClock`, and writes ``{"framework", "preset", "records": [...], ...}`` where each
record is one optimizer step::

    {"step": 1, "step_s": 2.3, "generate_and_reward_s": 0.35, "extra_forward_s": 0.34,
     "update_s": 1.57, "reward_mean": 0.4, "response_length_mean": 33.1}
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

PHASES = ("generate_and_reward_s", "extra_forward_s", "update_s")


def read_spec(path: str | Path) -> dict[str, Any]:
    """The job spec (settings every framework uses; see `bench_peers.job_spec`)."""
    return json.loads(Path(path).read_text())


def job_args(doc: str, argv: list[str] | None) -> tuple[dict[str, Any], str]:
    """A job's command line, ``--spec SPEC --out OUT``: (the spec, the output path)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--spec", required=True, help="the job spec written by bench_peers.py")
    ap.add_argument("--out", required=True, help="where to write the per-step records (JSON)")
    args = ap.parse_args(argv)
    return read_spec(args.spec), args.out


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """The shared prompt file: one ``{"step", "prompt", "gold"}`` record a line, in training order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class PhaseClock:
    """Seconds per phase within the current step, and the finished steps' records."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._phases: dict[str, float] = defaultdict(float)
        self._extra: dict[str, float] = defaultdict(float)
        self._rewards: list[float] = []
        self._lengths: list[float] = []

    def add(self, phase: str, seconds: float) -> None:
        """Adds `seconds` to `phase` of the current step."""
        self._phases[phase] += seconds

    def add_rewards(self, rewards: list[float], lengths: list[float] | None = None) -> None:
        """The current step's per-response rewards (and response lengths in tokens)."""
        self._rewards.extend(float(r) for r in rewards)
        self._lengths.extend(float(n) for n in (lengths or []))

    def timed(self, phase: str, fn):
        """`fn` wrapped so that each call's wall time is added to `phase`."""
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(phase, time.perf_counter() - t0)
        return wrapper

    def end_step(self, step: int, step_s: float, generate_s: float, extra_s: float, update_s: float) -> dict:
        """Closes the step with its whole-step and per-phase seconds; returns its record."""
        n = len(self._rewards)
        record = {"step": step, "step_s": step_s, "generate_and_reward_s": generate_s, "extra_forward_s": extra_s,
                  "update_s": update_s, "reward_mean": sum(self._rewards) / n if n else float("nan"),
                  "responses": n}
        if self._lengths:
            record["response_length_mean"] = sum(self._lengths) / len(self._lengths)
        record.update({f"detail/{k}": v for k, v in sorted(self._phases.items())})
        self.records.append(record)
        self._phases.clear()
        self._rewards.clear()
        self._lengths.clear()
        return record


def write_result(path: str | Path, framework: str, preset: str, records: list[dict], **extra: Any) -> dict:
    """Writes the job's result JSON; returns it."""
    result = {"framework": framework, "preset": preset, "records": records, **extra}
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    return result


def check_prompt_order(expected: list[dict[str, Any]], seen: list[list[str]]) -> None:
    """Raises SystemExit unless `seen` (each scored step's distinct prompts, in row order) is the
    start of the shared prompt file's steps: every framework must train on the same batches."""
    want = [[r["prompt"] for r in expected if r["step"] == s] for s in range(1, len(seen) + 1)]
    for step, (got, exp) in enumerate(zip(seen, want), start=1):
        if list(got) != exp:
            raise SystemExit(f"error: step {step} scored other prompts than the shared prompt file's "
                             f"(first: {got[:1]!r} vs {exp[:1]!r})")
