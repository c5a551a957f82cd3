"""Crash-safe resume: training processes really killed with SIGKILL, then restarted in place.

One uninterrupted reference run, and one run directory that is killed three times, each time at
a different point (inside step 2's generation, inside step 3's update, while step 3's checkpoint
is being written), then at a random moment, and finally restarted without a hook. The finished
run must equal the reference bit for bit (parameters, optimizer state, every logged metric
except timings), and metrics.jsonl must hold each step exactly once. The kill points are set by
`tests/reliability/kill_harness.py` through ``SSPO_KILL_AT``; the package has no test hooks.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sspo_jax.train.trainer import trainer_for_run as _trainer_for_run
from sspo_jax.train.logging_io import read_metrics
from tests.reliability.conftest import leaves
from tests.train.train_fixtures import fast_overrides

REPO = Path(__file__).resolve().parents[2]
STEPS = 4


def _command(model_dir: Path, run_dir: Path, config: Path) -> list[str]:
    sets = [*fast_overrides(model_dir, "sspo", STEPS), "eval.enabled=false", "rewards.weights.test_digit_share=1.0"]
    return [sys.executable, "-m", "tests.reliability.kill_harness", "train", "--config", str(config),
            *(a for s in sets for a in ("--set", s)), "--run-dir", str(run_dir)]


_CACHE: dict[str, str] = {}


def _env(kill_at: str | None) -> dict[str, str]:
    env = dict(os.environ)  # XLA_FLAGS of tests/conftest.py: the same devices as this process
    env.update(JAX_PLATFORMS="cpu", JAX_DEFAULT_MATMUL_PRECISION="highest", PYTHONPATH=str(REPO))
    # the runs share a persistent compilation cache: the first compiles, the others start in seconds
    env.update(JAX_COMPILATION_CACHE_DIR=_CACHE["dir"], JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("SSPO_KILL_AT", None)
    if kill_at:
        env["SSPO_KILL_AT"] = kill_at
    return env


def _launch(model_dir, run_dir, config, kill_at=None) -> subprocess.CompletedProcess:
    return subprocess.run(_command(model_dir, run_dir, config), cwd=REPO, env=_env(kill_at), capture_output=True,
                          text=True, timeout=300)


def _finished_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def _strip(records):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "tokens_per_s"))} for r in records]


def _killed(proc, where: str) -> None:
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    assert f"KILLED {where}" in proc.stdout


def _resumed_from(proc, step: int) -> bool:
    return f"checkpoints/{step} (step {step} of {STEPS})" in proc.stdout


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    _CACHE["dir"] = str(tmp_path_factory.mktemp("jax_cache"))
    path = tmp_path_factory.mktemp("kill") / "empty.yaml"
    path.write_text("{}\n")
    return path


@pytest.fixture(scope="module")
def reference(model_dir, config, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("kill") / "reference"
    proc = _launch(model_dir, run_dir, config)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir


@pytest.mark.slow
def test_sigkill_at_any_point_resumes_to_the_same_parameters(model_dir, config, reference, tmp_path):
    run = tmp_path / "run"

    # 1. killed inside step 2's generation: only checkpoint 1 is complete
    proc = _launch(model_dir, run, config, "generate:2")
    _killed(proc, "generate 2")
    assert _finished_steps(run) == [1]

    # 2. resumes from 1, completes step 2, killed inside step 3's update (after the jitted update ran)
    proc = _launch(model_dir, run, config, "update:3")
    _killed(proc, "update 3")
    assert _resumed_from(proc, 1)
    assert _finished_steps(run) == [1, 2]

    # 3. resumes from 2, killed while Orbax writes checkpoint 3: a temporary directory, never finalised
    proc = _launch(model_dir, run, config, "checkpoint:3")
    _killed(proc, "checkpoint 3")
    assert _resumed_from(proc, 2)
    assert _finished_steps(run) == [1, 2]
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("3.")], "a partial checkpoint 3"
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3], "step 3 was logged before its checkpoint"

    # 4. a kill at a random moment of a restarted run (seeded; the seed is in every failure message):
    # the delay counts from the restart's truncation of metrics.jsonl back to step 2 and spans
    # compilation, steps 3 and 4 and their checkpoints; the run may also finish first
    seed = int(os.environ.get("SSPO_KILL_SEED", random.randrange(1 << 30)))
    delay = random.Random(seed).uniform(0.0, 8.0)
    before = _inode(run)  # the restart rewrites the log through a new file
    child = subprocess.Popen(_command(model_dir, run, config), cwd=REPO, env=_env(None), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while child.poll() is None and _inode(run) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
    finally:
        _, err = child.communicate(timeout=120)
    assert child.returncode in (0, -signal.SIGKILL), (seed, child.returncode, err[-4000:])

    # 5. no hook: resumes from the newest complete checkpoint (unless 4. finished) and finishes
    proc = _launch(model_dir, run, config)
    assert proc.returncode == 0, (seed, proc.stderr[-4000:])
    assert _finished_steps(run)[-1] == STEPS, seed

    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1)), (seed, "each step exactly once")
    assert _strip(records) == _strip(read_metrics(reference)), seed

    done, ref = _trainer_for_run(run), _trainer_for_run(reference)
    try:
        assert done.start_step == ref.start_step == STEPS
        for a, b in zip(leaves(ref.state.params), leaves(done.state.params), strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(leaves(ref.state.opt_state), leaves(done.state.opt_state), strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.asarray(ref.state.rng), np.asarray(done.state.rng))
        assert done.batcher.state() == ref.batcher.state()
    finally:
        done.close()
        ref.close()


def _inode(run: Path) -> int:
    try:
        return (run / "metrics.jsonl").stat().st_ino
    except OSError:
        return -1
