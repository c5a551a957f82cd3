"""Loading a run without training machinery (`load_run`, read-only directories), rewards named by
``module:function`` in a fresh process, and the CLI's one-line errors for every error class."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from sspo_jax import errors
from sspo_jax.cli import main
from sspo_jax.parallel import DistributedError
from sspo_jax.rewards import RewardConfigError, UnknownRewardError
from sspo_jax.rollout import SamplingError
from sspo_jax.train import Trainer
from sspo_jax.train.load_run import load_run
from tests.train.train_fixtures import fast_config, make_checkpoint

REWARD_MODULE = '''
import numpy as np
from sspo_jax.rewards import RewardOutput

def digit_share(inp, cfg):
    """The share of digit characters of each response (a dense reward a random model earns)."""
    return RewardOutput(np.array([sum(c.isdigit() for c in r) / max(len(r), 1) for r in inp.responses], np.float32))
'''


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory):
    """A one-step run (checkpointed) whose reward is a `module:function` spec of a module on sys.path."""
    root = tmp_path_factory.mktemp("load_run")
    (root / "pkg").mkdir()
    (root / "pkg" / "my_rewards_mod.py").write_text(REWARD_MODULE)
    sys.path.insert(0, str(root / "pkg"))
    model_dir = make_checkpoint(root / "model")
    spec = "my_rewards_mod:digit_share"
    cfg = fast_config(model_dir, "sspo", root / "run", "eval.enabled=false", steps=1)
    cfg = cfg.replace(rewards=cfg.rewards.replace(weights={spec: 1.0}), eval=cfg.eval.__class__(reward=spec,
                                                                                               enabled=False))
    trainer = Trainer(cfg, echo=lambda s: None)
    try:
        trainer.run()
        params = [np.asarray(x) for x in jax.tree.leaves(trainer.state.params)]
    finally:
        trainer.close()
    return root, root / "run", params, spec


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_load_run_reads_params_only_from_a_read_only_copy(custom_run, tmp_path):
    _, run, params, _ = custom_run
    copy = tmp_path / "ro"
    shutil.copytree(run, copy)
    for p in [copy, *copy.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = _snapshot(copy)
    try:
        loaded = load_run(copy)
        assert loaded.step == 1 and loaded.config.train.steps == 1
        for a, b in zip(params, jax.tree.leaves(loaded.params), strict=True):
            np.testing.assert_array_equal(a, np.asarray(b))
        assert load_run(copy / "checkpoints" / "1", weights=False).params is None
        assert _snapshot(copy) == before, "load_run wrote into the run directory"
    finally:
        for p in [copy, *copy.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_load_run_accepts_a_relative_path(custom_run, monkeypatch):
    _, run, params, _ = custom_run
    monkeypatch.chdir(run.parent)  # Orbax itself needs absolute paths: load_run makes them so
    loaded = load_run(Path(run.name))
    assert loaded.step == 1 and loaded.run_dir.is_absolute()
    np.testing.assert_array_equal(params[0], np.asarray(jax.tree.leaves(loaded.params)[0]))


def test_load_run_names_a_missing_checkpoint(custom_run, tmp_path):
    _, run, _, _ = custom_run
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy2(run / "config.yaml", bare / "config.yaml")
    with pytest.raises(errors.CheckpointError, match="holds no checkpoint"):
        load_run(bare)
    with pytest.raises(errors.CheckpointError, match=r"no checkpoint of step 7 .*available: \[1\]"):
        load_run(run, step=7)
    with pytest.raises(errors.ConfigError, match="not a run directory"):
        load_run(tmp_path)


@pytest.mark.slow
def test_a_module_function_reward_survives_eval_in_a_fresh_process(custom_run):
    root, run, _, spec = custom_run
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "pkg"), str(Path.cwd())]),
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "sspo_jax.cli", "eval", "--model", str(run), "--size", "2",
                           "--reward", spec], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["problems"] == 2 and 0 <= result["accuracy"] <= 1


ERROR_CLASSES = [errors.ConfigError, errors.DataError, errors.CheckpointError, errors.ModelError,
                 errors.TrainingError, RewardConfigError, SamplingError, DistributedError, UnknownRewardError]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_the_cli_prints_every_error_class_as_one_line_with_exit_code_2(cls, monkeypatch, capsys, tmp_path):
    def fail(args):
        raise cls("first line of what is wrong\n  and a second line that must not break the output")

    monkeypatch.setattr("sspo_jax.cli.cmd_plot", fail)
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: first line of what is wrong and a second line"), err
    assert issubclass(cls, errors.SspoError)


def test_an_unknown_eval_reward_is_one_line_not_a_traceback(custom_run, capsys):
    _, run, _, _ = custom_run
    assert main(["eval", "--model", str(run), "--reward", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown reward 'nope'; known rewards:") and "Traceback" not in err
    assert err.count("\n") == 1


def test_eval_refuses_a_negative_sample_count_by_its_flag(custom_run, capsys):
    _, run, _, _ = custom_run
    assert main(["eval", "--model", str(run), "--samples", "-2"]) == 2
    assert "--samples=-2 must be >= 0" in capsys.readouterr().err


def test_export_refuses_a_non_empty_directory_and_a_file(custom_run, tmp_path, capsys):
    _, run, _, _ = custom_run
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{\"mine\": 1}")
    assert main(["export", "--checkpoint", str(run), "--out", str(full)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert json.loads((full / "config.json").read_text()) == {"mine": 1}, "export overwrote a file it did not write"
    (tmp_path / "file").write_text("x")
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_the_core_never_imports_the_tooling():
    code = ("import sys, sspo_jax.train, sspo_jax.algorithms, sspo_jax.models, sspo_jax.rewards, sspo_jax.data, "
            "sspo_jax.rollout, sspo_jax.parallel; "
            "bad = sorted(m for m in sys.modules if m.startswith('sspo_jax.tools')); print(bad); "
            "sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_reward_modules_import_without_a_cycle():
    code = "import sspo_jax.rewards.config, sspo_jax.rewards.registry; import sspo_jax.rewards"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
