"""A real two-process job on CPU: two processes on localhost with 4 CPU devices each (gloo
collectives), started through the SSPO_* environment variables, train the tiny config for 2 steps
on a (2, 2, 2) mesh over all 8 devices. The parameters, the metrics and the data cursor must equal
those of one process with 8 devices, only process 0 writes the run's files, and Orbax writes the
checkpoints of both processes into one directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from sspo_jax.train import Trainer
from tests.parallel.mesh_fixtures import mesh_run_config
from tests.train.train_fixtures import make_checkpoint

ROOT = Path(__file__).resolve().parents[2]
STEPS = 2
TIMEOUT_S = 420  # the workers dump their stacks and exit 30 s before this


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(model_dir: Path, run_dir: Path, out_dir: Path) -> None:
    port = _free_port()
    procs = []
    for pid in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "SSPO_"))}
        env.update(SSPO_COORDINATOR_ADDRESS=f"localhost:{port}", SSPO_NUM_PROCESSES="2", SSPO_PROCESS_ID=str(pid),
                   SSPO_TEST_WORKER_TIMEOUT_S=str(TIMEOUT_S - 30), PYTHONPATH=str(ROOT))
        log = open(out_dir / f"worker-{pid}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "tests.parallel.multiprocess_worker", str(model_dir),
                                        str(run_dir), str(out_dir), str(STEPS)], cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT), log))
    codes = []
    for proc, log in procs:
        try:
            codes.append(proc.wait(timeout=TIMEOUT_S))
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGTERM is caught by JAX's preemption notifier
            codes.append(proc.wait())
        log.close()
    if codes != [0, 0]:
        tails = "\n".join(f"--- worker {i} (exit {c}):\n" + "\n".join(
            line for line in (out_dir / f"worker-{i}.log").read_text().splitlines()[-40:] if "[Gloo]" not in line)
            for i, c in enumerate(codes))
        pytest.fail(f"the two-process job failed:\n{tails}")


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_eight_devices(tmp_path):
    model_dir = make_checkpoint(tmp_path / "model")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    run_dir = tmp_path / "two_processes"
    _launch(model_dir, run_dir, out_dir)

    single = Trainer(mesh_run_config(model_dir, tmp_path / "one_process", STEPS), echo=lambda s: None)
    single.run()
    single.close()

    info = json.loads((out_dir / "info.json").read_text())
    assert (info["process_count"], info["device_count"], info["local_device_count"]) == (2, 8, 4)
    expected = [np.asarray(x) for x in jax.tree.leaves(single.state.params)]
    got = np.load(out_dir / "params.npz")
    assert len(got.files) == len(expected)
    for i, want in enumerate(expected):  # same mesh, same partitioning: equal up to collective order
        np.testing.assert_allclose(got[f"arr_{i}"], want, rtol=1e-5, atol=1e-6)

    # the data cursor is the same in both processes (and as in one process): resume works anywhere
    assert info["data_cursor"] == json.loads((out_dir / "cursor-1.json").read_text()) == single.batcher.state()

    # process 0 alone wrote the run's files; the metrics are global (equal to one process's)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(x) for x in (tmp_path / "one_process" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [r["step"] for r in want] == [0, 1, 2]
    for a, b in zip(lines, want):
        assert set(a) == set(b)
        for key in b:
            if not key.startswith("time/") and key != "tokens_per_s":
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert (run_dir / "summary.json").is_file() and (run_dir / "config.yaml").is_file()
    assert not list(run_dir.glob(".write-probe*"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]
