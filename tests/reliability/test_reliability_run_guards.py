"""Guards around a run directory and a running job (issue 21): one trainer per directory, a config
that changes on resume, SIGTERM/Ctrl-C, non-finite weights at export, every checkpoint corrupt,
prompts cut to max_prompt_len, verifier timeouts, and SPPO's reward range."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sspo_jax.rewards import RewardConfig, VerifierPool
from sspo_jax.rewards.pool import TIMEOUT
from sspo_jax.errors import ConfigError
from sspo_jax.train import Trainer, TrainingError, load_config
from sspo_jax.train import resume as resume_mod
from sspo_jax.train.config import LoopConfig, config_to_mapping
from sspo_jax.train.logging_io import read_metrics
from sspo_jax.train.run_lock import RunLockedError, acquire_run_lock
from sspo_jax.train.score import check_reward_range
from sspo_jax.train.signals import StopRequest as _StopRequest
from sspo_jax.train.trainer import trainer_for_run
from tests.reliability.conftest import run_cli, run_config, train_argv
from tests.reliability.faulty_verify import hang_forever
from tests.reliability.test_reliability_faults import HANGING, _copy_run, _fake_responses

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
REPO = Path(__file__).resolve().parents[2]


# ---- one trainer per run directory --------------------------------------------------------------

def test_a_second_trainer_on_the_same_run_directory_fails_naming_the_holder(model_dir, finished_run, tmp_path):
    run = _copy_run(finished_run, tmp_path)
    first = Trainer(run_config(model_dir, run, steps=3), echo=lambda s: None)
    try:
        with pytest.raises(RunLockedError, match=f"is in use by another trainer: pid {os.getpid()} on host "
                                                 f"{socket.gethostname()} since 20"):
            Trainer(run_config(model_dir, run, steps=3), echo=lambda s: None)
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1", "2", "3"], "nothing was moved"
    finally:
        first.close()
    again = Trainer(run_config(model_dir, run, steps=3), echo=lambda s: None)  # released by close()
    again.close()
    with pytest.raises(ConfigError, match="different config"):  # a failed start releases the lock too
        Trainer(run_config(model_dir, run, "optim.lr=2e-3", steps=3), echo=lambda s: None)
    acquire_run_lock(run).release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from sspo_jax.train.run_lock import "
                               "acquire_run_lock; acquire_run_lock(sys.argv[1]); print('locked', flush=True); "
                               "time.sleep(600)", str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} on host {socket.gethostname()}"):
            acquire_run_lock(tmp_path)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    acquire_run_lock(tmp_path).release()  # the kernel released the dead holder's flock


# ---- a changed config on resume ---------------------------------------------------------------------

def test_config_changes_are_diffed_against_the_checkpoint_config():
    cfg = load_config(None, ["optim.lr=1e-3"])
    saved = json.loads(json.dumps(config_to_mapping(cfg)))
    del saved["rewards"]["max_gold_unparsed_frac"], saved["train"]  # keys an older version did not write
    assert resume_mod.config_changes(saved, cfg) == []
    saved["optim"]["lr"], saved["eval"]["size"] = 2e-3, 7
    changes = {c.key: c for c in resume_mod.config_changes(saved, cfg)}
    assert set(changes) == {"optim.lr", "eval.size"}
    assert not changes["optim.lr"].safe and changes["eval.size"].safe
    assert changes["optim.lr"].describe() == "optim.lr: 0.002 -> 0.001"
    with pytest.raises(ConfigError, match=r"optim.lr: 0.002 -> 0.001; resume with the original values"):
        resume_mod.check_config_unchanged(Path("RUN"), cfg, {"config": saved, "step": 3})
    assert len(resume_mod.check_config_unchanged(Path("RUN"), cfg, {"config": saved}, allow=("optim",))) == 2
    assert resume_mod.config_changes(None, cfg) == []


def test_sigint_stops_cleanly_with_a_checkpoint_and_config_changes_are_recorded(model_dir, finished_run, tmp_path,
                                                                                 empty_config, capsys, monkeypatch):
    run = _copy_run(finished_run, tmp_path)
    real_step = Trainer.step

    def step(self, k):
        if k == 4:  # Ctrl-C in the middle of step 4; the config file is edited on disk meanwhile
            empty_config.write_text("train: {steps: 1}\n")
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, k)

    monkeypatch.setattr(Trainer, "step", step)
    rc, err = run_cli(train_argv(model_dir, run, empty_config, "train.steps=6", "checkpoint.every=10"), capsys)
    assert rc == 128 + signal.SIGINT, err
    assert f"stopped by SIGINT after step 4 of 6 (checkpoint {run}/checkpoints/4 written; run the same command " \
           "again to resume)" in err and "error:" not in err
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == [2, 3, 4]
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]
    assert "steps: 6" in (run / "config.yaml").read_text(), "the run keeps the config it started with"
    changes = resume_mod.read_config_changes(run)
    assert {(c["key"], c["old"], c["new"], c["reason"], c["step"]) for c in changes} == {
        ("train.steps", 3, 6, "safe", 3), ("checkpoint.every", 1, 10, "safe", 3),
        ("run_dir", str(finished_run[0]), str(run), "safe", 3)}  # the run was copied

    # an unsafe change needs the explicit override, which is recorded too
    trainer = Trainer(run_config(model_dir, run, "optim.lr=2e-3", "checkpoint.every=10", steps=4),
                      echo=lambda s: None, allow_config_change=("optim.lr",))
    try:
        assert trainer.start_step == 4
        summary = trainer.run()
    finally:
        trainer.close()
    assert ("optim.lr", 0.001, 0.002, "allowed", 4) in {(c["key"], c["old"], c["new"], c["reason"], c["step"])
                                                        for c in summary["config_changes"]}


def test_a_second_signal_stops_at_once():
    said = []
    # Python's own Ctrl-C handler as the one to put back (a pytest-xdist worker runs with another)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    stop = _StopRequest(said.append)
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.signal_name == "SIGINT" and "send it again to stop at once" in said[0]
        with pytest.raises(KeyboardInterrupt):  # the previous handler is back: the second one interrupts
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        stop.uninstall()
        signal.signal(signal.SIGINT, outer)


# ---- damaged or diverged checkpoints ----------------------------------------------------------------

def _truncate_all(step_dir: Path) -> None:
    for f in (step_dir / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def test_every_checkpoint_corrupt_gives_the_error_last_and_orbax_details_in_a_log(model_dir, finished_run, tmp_path,
                                                                                 empty_config, capsys):
    run = _copy_run(finished_run, tmp_path)
    for step in (1, 2, 3):
        _truncate_all(run / "checkpoints" / str(step))
    rc, err = run_cli(train_argv(model_dir, run, empty_config, steps=3), capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"error: every checkpoint in {run}/checkpoints [1, 2, 3] is unreadable or corrupt")
    assert "Traceback" not in err and len(lines) <= 4, err  # one warning per checkpoint, then the error
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1", "2", "3"], "nothing was deleted"


def test_a_named_corrupt_checkpoint_is_a_clear_error_at_export(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    _truncate_all(run / "checkpoints" / "3")
    rc, err = run_cli(["export", "--checkpoint", str(run / "checkpoints" / "3"), "--out", str(tmp_path / "out")],
                      capsys)
    assert rc == 2 and "Traceback" not in err
    assert f"error: checkpoint {run}/checkpoints/3 is unreadable or corrupt" in err
    assert "choose another step of [1, 2, 3]" in err


def test_export_refuses_non_finite_weights(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    trainer = trainer_for_run(run)
    try:
        poisoned = jax.tree.map(lambda x: x * jnp.nan, trainer.state.params)
        trainer.state = trainer.state.replace(params=poisoned)
        trainer.save(4)
    finally:
        trainer.close()
    rc, err = run_cli(["export", "--checkpoint", str(run), "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and "Traceback" not in err
    assert f"error: checkpoint {run}/checkpoints/4 has non-finite weights" in err
    assert "export an earlier step of [2, 3, 4]" in err
    assert not (tmp_path / "out").exists()


# ---- prompts, verifier timeouts, golds, SPPO ------------------------------------------------------------

def test_truncated_prompts_and_timeouts_are_counted_and_warned(live_trainer, monkeypatch):
    trainer = live_trainer
    cfg = trainer.cfg
    cfg = cfg.replace(train=LoopConfig(steps=1), data=cfg.data.replace(max_prompt_len=4),
                      rewards=RewardConfig(weights={"math": 1.0}, workers=0, timeout_s=1.0, timeout_warn_frac=0.05))
    monkeypatch.setattr(trainer, "cfg", cfg)
    monkeypatch.setattr(trainer.batcher, "cfg", cfg.data)
    monkeypatch.setattr(trainer, "start_step", 0)
    monkeypatch.setattr(trainer, "eval_history", [])
    said: list[str] = []
    monkeypatch.setattr(trainer, "echo", said.append)
    _fake_responses(monkeypatch, trainer, lambda golds: [HANGING] + [f"\\boxed{{{g}}}" for g in golds[1:]])
    summary = trainer.run()
    (record,) = read_metrics(trainer.run_dir)
    assert record["data/prompts_truncated"] == cfg.data.batch_size and record["data/prompts_rejected"] == 0
    assert record["reward/math/timeouts"] == 1
    assert summary["prompts_truncated"] >= cfg.data.batch_size
    text = "\n".join(said)
    assert f"step 1: {1 / cfg.rows:.0%} of the responses' verifications timed out" in text
    assert (f"step 1: {cfg.data.batch_size} prompt(s) longer than data.max_prompt_len=4 tokens were cut to their "
            "last 4 tokens") in text


def test_a_pool_whose_every_item_hangs_has_a_bounded_cost():
    pool = VerifierPool(2, warm_up=None, max_restarts_per_call=2)
    start = time.monotonic()
    try:
        result = pool.map(hang_forever, [(i,) for i in range(80)], timeout_s=0.5)
    finally:
        pool.close()
    elapsed = time.monotonic() - start
    assert np.all(result.status == TIMEOUT) and result.timeouts == 80
    assert pool.restarts == 3, "the cap plus the last replacement"
    assert elapsed < 60, f"{elapsed:.0f} s: every timeout must not replace the pool"
    assert sum("not verified: the verifier pool was already replaced 2 times" in e for e in result.errors) > 50


def test_sppo_rewards_outside_0_1_stop_the_run():
    sppo = load_config(None, ["algorithm.preset=sppo"])
    check_reward_range(sppo, np.array([0.0, 1.0, 0.5], np.float32), 1)
    with pytest.raises(TrainingError, match=r"step 3: rewards range over \[-0.5, 1\], but sppo's prompt critic"):
        check_reward_range(sppo, np.array([-0.5, 1.0], np.float32), 3)
    check_reward_range(load_config(None, []), np.array([-0.5, 2.0], np.float32), 3)  # other critics: any range
