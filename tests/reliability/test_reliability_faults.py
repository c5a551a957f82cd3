"""Faults around a running job: damaged checkpoints, misbehaving reward verifiers, full or
unwritable disks. Each ends in a fallback or a clear error, never a hang or a traceback."""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import sspo_jax.rewards.math_answer as math_answer
import sspo_jax.train.build as build_stage
import sspo_jax.train.sample as sample_stage
from sspo_jax.train.trainer import trainer_for_run as _trainer_for_run
from sspo_jax.rewards import RewardConfig, close_pools
from sspo_jax.train import Trainer, TrainingError
from sspo_jax.train.logging_io import read_metrics
from tests.reliability.conftest import leaves, run_cli, run_config, train_argv
from tests.reliability.faulty_verify import faulty_verify

# Orbax leaves un-awaited read coroutines behind when array data is truncated: not our error
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

HANGING = "The answer is \\boxed{9^{9^{9^{9}}}}."  # sympy never finishes comparing this (tests/rewards)


# ---- damaged checkpoints ----------------------------------------------------------------------

def _copy_run(finished_run, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    return run


def _data_files(step_dir: Path) -> list[Path]:
    """The array data files Orbax reads (OCDBT data under state/), largest first."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes((b + 1) % 256 for b in data[mid:mid + 64])  # same size, different bytes
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "array_data_truncated": lambda d: _truncate(_data_files(d)[0]),
    "array_data_garbled": lambda d: _garble(_data_files(d)[0]),  # Orbax alone restores this silently
    "metadata_json_truncated": lambda d: _truncate(d / "meta" / "metadata"),
    "state_directory_missing": lambda d: shutil.rmtree(d / "state"),
    "array_index_missing": lambda d: (d / "state" / "_METADATA").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one_with_a_warning(finished_run, tmp_path, caplog,
                                                                                damage):
    run = _copy_run(finished_run, tmp_path)
    DAMAGE[damage](run / "checkpoints" / "3")
    with caplog.at_level(logging.WARNING, logger="sspo_jax.train.checkpoint"):
        trainer = _trainer_for_run(run)
    try:
        assert trainer.start_step == 2
    finally:
        trainer.close()
    text = caplog.text
    assert f"checkpoint {run}/checkpoints/3 is unreadable or corrupt" in text
    assert f"restored checkpoint {run}/checkpoints/2 instead of the unreadable newer checkpoint(s) [3]" in text


def test_training_after_a_fallback_equals_the_uninterrupted_run(model_dir, finished_run, tmp_path):
    _, params, opt_state = finished_run
    run = _copy_run(finished_run, tmp_path)
    _garble(_data_files(run / "checkpoints" / "3")[0])
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "reward/me')  # a line torn by a crash
    trainer = Trainer(run_config(model_dir, run, steps=3), echo=lambda s: None)
    try:
        assert trainer.start_step == 2
        trainer.run()
    finally:
        trainer.close()
    for a, b in zip(params, leaves(trainer.state.params), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(opt_state, leaves(trainer.state.opt_state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    assert (run / "checkpoints_unreadable" / "3").is_dir(), "the damaged checkpoint is kept aside, not deleted"
    again = _trainer_for_run(run)
    again.close()
    assert again.start_step == 3, "the re-written checkpoint 3 is readable"


# every checkpoint unreadable, and a named one unreadable at export: test_reliability_run_guards.py


def test_every_checkpoint_unreadable_is_a_clear_error_not_a_fresh_start(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    for step in (1, 2, 3):
        _garble(_data_files(run / "checkpoints" / str(step))[0])
    rc, err = run_cli(["export", "--checkpoint", str(run), "--out", str(tmp_path / "out")], capsys)
    assert rc == 2
    assert "error: every checkpoint in" in err and "[1, 2, 3] is unreadable or corrupt" in err
    assert "move that directory away" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1", "2", "3"], "nothing was deleted"


def test_a_named_corrupt_checkpoint_is_a_clear_error(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    _garble(_data_files(run / "checkpoints" / "3")[0])
    rc, err = run_cli(["export", "--checkpoint", str(run / "checkpoints" / "3"), "--out", str(tmp_path / "out")],
                      capsys)
    assert rc == 2 and "Traceback" not in err
    assert f"error: checkpoint {run}/checkpoints/3 is unreadable or corrupt" in err
    assert "choose another step of [1, 2, 3]" in err


# ---- reward verifiers that hang or crash --------------------------------------------------------

def _fake_responses(monkeypatch, trainer, texts_for):
    """The trainer's decoded responses become texts_for(golds)."""
    captured = {}
    real_next = trainer.batcher.next_batch

    def next_batch():
        captured["batch"] = real_next()
        return captured["batch"]

    monkeypatch.setattr(trainer.batcher, "next_batch", next_batch)
    monkeypatch.setattr(sample_stage, "decode_responses", lambda tok, roll: texts_for(captured["batch"].golds))


def test_hanging_crashing_and_raising_verifiers_are_cut_off_scored_0_and_counted(live_trainer, monkeypatch):
    trainer = live_trainer
    faults = ["\\boxed{hang}", "\\boxed{crash}", "\\boxed{raise}"]

    def texts(golds):
        return faults + [f"\\boxed{{{golds[3]}}}"] + ["no answer"] * (len(golds) - 4)

    _fake_responses(monkeypatch, trainer, texts)
    monkeypatch.setattr(math_answer, "verify_answer", faulty_verify)  # pickled by reference into the workers
    monkeypatch.setattr(trainer, "cfg", trainer.cfg.replace(rewards=RewardConfig(weights={"math": 1.0}, workers=1,
                                                                                  timeout_s=1.0)))
    before = leaves(trainer.state.params)
    start = time.monotonic()
    try:
        metrics = trainer.step(1)
    finally:
        close_pools()
    assert time.monotonic() - start < 120, "a hung verifier must not stall the step"
    assert metrics["reward/math/timeouts"] == 1.0 and metrics["reward/timeouts"] == 1.0
    assert metrics["reward/math/failures"] == 2.0 and metrics["reward/failures"] == 2.0  # crash + raise
    assert metrics["reward/math/mean"] == pytest.approx(1 / trainer.cfg.rows)  # only the correct row scores
    assert metrics["skipped_updates"] == 0
    assert all(np.isfinite(v) for v in metrics.values())
    assert any(not np.array_equal(a, b) for a, b in zip(before, leaves(trainer.state.params)))


def test_hanging_verification_in_process_is_timed_out_and_counted(live_trainer, monkeypatch):
    trainer = live_trainer
    _fake_responses(monkeypatch, trainer, lambda golds: [HANGING] + [f"\\boxed{{{g}}}" for g in golds[1:]])
    monkeypatch.setattr(trainer, "cfg", trainer.cfg.replace(rewards=RewardConfig(weights={"math": 1.0}, workers=0,
                                                                                  timeout_s=1.0)))
    start = time.monotonic()
    metrics = trainer.step(1)
    assert time.monotonic() - start < 60
    assert metrics["reward/math/timeouts"] == 1.0 and metrics["reward/math/failures"] == 0.0
    assert metrics["reward/math/mean"] == pytest.approx(1 - 1 / trainer.cfg.rows)


# ---- full or unwritable disks --------------------------------------------------------------------

def test_unwritable_run_directory_fails_before_training(model_dir, tmp_path, empty_config, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, err = run_cli(train_argv(model_dir, blocker / "run", empty_config), capsys)
    assert rc == 2 and "Traceback" not in err
    assert f"error: run directory '{blocker / 'run'}' is not writable" in err and "choose another --run-dir" in err


def test_full_disk_fails_before_training(model_dir, tmp_path, empty_config, capsys, monkeypatch):
    real = pathlib.Path.write_bytes

    def write_bytes(self, data):
        if self.name == ".write-probe":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)
    rc, err = run_cli(train_argv(model_dir, tmp_path / "run", empty_config), capsys)
    assert rc == 2
    assert "is not writable (No space left on device); choose another --run-dir or free disk space" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_too_little_space_for_one_checkpoint_fails_before_training(model_dir, tmp_path, empty_config, capsys,
                                                                    monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(build_stage.shutil, "disk_usage", lambda p: usage._replace(free=100_000))
    rc, err = run_cli(train_argv(model_dir, tmp_path / "run", empty_config), capsys)
    assert rc == 2
    assert "has 0.1 MiB free, but one checkpoint needs about" in err and "free disk space" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_disk_full_while_writing_a_checkpoint_stops_with_a_clear_error(finished_run, tmp_path, monkeypatch):
    run = _copy_run(finished_run, tmp_path)
    trainer = _trainer_for_run(run)
    try:
        def full(*args, **kwargs):  # what Orbax raises when the disk fills up mid-save
            raise ValueError("RESOURCE_EXHAUSTED: Error writing \"params.model.embed.value/0.0\" in OCDBT database: "
                             "Failed to write 84175 bytes to file 4: No space left on device [os_error_code='28']")

        monkeypatch.setattr(trainer.checkpointer.manager, "save", full)
        with pytest.raises(TrainingError, match=r"cannot write the checkpoint of step 4 .*the disk is full: No "
                                                r"space left on device\); free disk space .* resumes from the newest"):
            trainer.save(4)
        assert trainer.checkpointer.steps() == [1, 2, 3]
    finally:
        trainer.close()
