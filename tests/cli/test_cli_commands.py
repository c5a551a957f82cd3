"""The sspo-jax command line on a tiny random checkpoint: train, eval, export, plot, config errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from sspo_jax.cli import main
from tests.train.train_fixtures import fast_overrides, make_checkpoint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("cli") / "model")


@pytest.fixture(scope="module")
def trained_run(model_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    cfg_path = run.parent / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({"algorithm": {"preset": "sspo"}}))
    sets = [x for o in fast_overrides(model_dir, "sspo", steps=2) for x in ("--set", o)]
    assert main(["train", "--config", str(cfg_path), *sets, "--run-dir", str(run), "--no-progress"]) == 0
    return run


def test_train_writes_a_complete_run_directory(trained_run, capsys):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints"} <= names
    assert json.loads((trained_run / "summary.json").read_text())["steps"] == 2


def test_eval_of_a_run_and_of_a_model_directory(trained_run, model_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(trained_run), "--size", "4", "--samples", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["problems"] == 4 and 0 <= result["accuracy"] <= 1 and "pass@2" in result
    capsys.readouterr()
    assert main(["eval", "--model", str(model_dir), "--size", "3", "--set", "sampling.max_new_tokens=4",
                 "--set", "data.template=plain", "--set", "data.prompt_template={prompt}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["problems"] == 3 and printed["model"] == str(model_dir)


@pytest.mark.torch
def test_export_loads_in_transformers_with_identical_logits(trained_run, tmp_path):
    import jax.numpy as jnp
    import torch
    from flax import nnx
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sspo_jax.train.trainer import trainer_for_run as _trainer_for_run

    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(trained_run / "checkpoints" / "2"), "--out", str(out)]) == 0
    assert (out / "tokenizer.json").exists() and (out / "config.json").exists()
    trainer = _trainer_for_run(trained_run / "checkpoints" / "2")
    flax_model = nnx.merge(trainer.models.policy, trainer.state.params)
    tokens = np.asarray(AutoTokenizer.from_pretrained(str(out))("17+25=42, 42*3=126.")["input_ids"])[None]
    expected = np.asarray(flax_model(jnp.asarray(tokens)))
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        got = hf(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_plot_writes_a_png(trained_run):
    assert main(["plot", str(trained_run)]) == 0
    png = trained_run / "curves.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("sets,message", [
    (["train.stepz=3"], "unknown config key.*train.stepz"),
    (["optim.lr=-1"], "optim.lr=-1.0 must be > 0"),
    (["data.batch_size=two"], "data.batch_size must be an integer"),
    (["algorithm.preset=ppo2"], "unknown algorithm preset 'ppo2'"),
    (["algorithm.eps_low=1.2"], "eps_low=1.2"),
    (["data.group_size=0"], "data.group_size"),
    (["sampling.top_p=0"], "top_p"),
    (["checkpoint.every=0"], "checkpoint.every"),
])
def test_config_errors_name_the_key(tmp_path, capsys, sets, message):
    import re

    cfg = tmp_path / "c.yaml"
    cfg.write_text("algorithm: {preset: sspo}\n")
    code = main(["train", "--config", str(cfg), *[x for s in sets for x in ("--set", s)], "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err), err


def test_yaml_syntax_error_names_the_line(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("algorithm:\n  preset: sspo\n  eps_low: [0.2\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "bad.yaml: YAML syntax error at line" in capsys.readouterr().err


def test_help_of_every_command(capsys):
    for cmd in ("train", "eval", "export", "plot"):
        with pytest.raises(SystemExit) as exit_info:
            main([cmd, "--help"])
        assert exit_info.value.code == 0
        assert cmd in capsys.readouterr().out
