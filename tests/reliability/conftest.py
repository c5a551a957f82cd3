"""Shared fixtures of the reliability suite: a tiny random Qwen2 checkpoint, a short finished run
(checkpoints 1..3, trained in this process) and helpers to run the CLI in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from sspo_jax import cli
from sspo_jax.models import Qwen2Config, Qwen2ForCausalLM, save_pretrained
from sspo_jax.train import Trainer
from tests.reliability import kill_harness  # noqa: F401 - registers the dense reward "test_digit_share"
from tests.train.train_fixtures import fast_config, fast_overrides, make_checkpoint

DENSE = ("rewards.weights.test_digit_share=1.0",)  # a random model earns it: non-zero advantages
QUIET = ("eval.enabled=false",)


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def run_config(model_dir: Path, run_dir: Path, *extra: str, steps: int = 3, preset: str = "sspo"):
    """The fast trainer config of tests/train with the dense test reward and no evaluation."""
    return fast_config(model_dir, preset, run_dir, *QUIET, *DENSE, *extra, steps=steps)


def train_argv(model_dir: Path, run_dir: Path, config: Path, *extra: str, steps: int = 1) -> list[str]:
    """``sspo-jax train`` arguments of the fast config (overridable by `extra`)."""
    sets = [*fast_overrides(model_dir, "sspo", steps), *QUIET, *DENSE, *extra]
    return ["train", "--config", str(config), *(a for s in sets for a in ("--set", s)), "--run-dir", str(run_dir)]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``cli.main(argv)`` in this process: (exit code, stderr)."""
    capsys.readouterr()
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse and explicit SystemExit("error: ...")
        rc = exc.code if isinstance(exc.code, int) else 2
        if isinstance(exc.code, str):
            print(exc.code, file=__import__("sys").stderr)
    return rc, capsys.readouterr().err


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def model_with(dst: Path, tokenizer_dir: Path, **config_changes) -> Path:
    """A random Qwen2 like `tokenizer_dir`'s but with `config_changes`, next to its tokenizer files."""
    shutil.copytree(tokenizer_dir, dst)
    cfg_path = dst / "config.json"
    edit_json(cfg_path, **config_changes)
    save_pretrained(Qwen2ForCausalLM(Qwen2Config.from_pretrained_dir(dst), rngs=nnx.Rngs(1)), str(dst))
    return dst


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("reliability") / "model")


@pytest.fixture(scope="session")
def finished_run(model_dir, tmp_path_factory):
    """A 3-step run with checkpoints 1, 2, 3: (run_dir, params after step 3, opt_state after step 3).

    Tests copy the directory before changing it.
    """
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    trainer = Trainer(run_config(model_dir, run_dir, steps=3), echo=lambda s: None)
    try:
        trainer.run()
    finally:
        trainer.close()
    return run_dir, leaves(trainer.state.params), leaves(trainer.state.opt_state)


@pytest.fixture
def empty_config(tmp_path) -> Path:
    path = tmp_path / "empty.yaml"
    path.write_text("{}\n")
    return path


@pytest.fixture(scope="session")
def live_trainer(model_dir, tmp_path_factory):
    """A Trainer without checkpoints whose jitted functions compile once for the whole suite; tests
    call ``live_trainer.step(k)`` directly and patch it with monkeypatch (restored after each test)."""
    run_dir = tmp_path_factory.mktemp("live") / "run"
    trainer = Trainer(run_config(model_dir, run_dir, "checkpoint.enabled=false", steps=100), echo=lambda s: None)
    yield trainer
    trainer.close()
