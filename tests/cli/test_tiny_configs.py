"""Every shipped tiny config loads and trains two steps; the paper configs validate."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from sspo_jax.algorithms import presets
from sspo_jax.train import Trainer, load_config
from sspo_jax.train.logging_io import read_metrics

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_there_is_a_tiny_config_for_every_preset():
    assert sorted(p.stem.removeprefix("tiny_") for p in CONFIGS.glob("tiny_*.yaml") if p.stem != "tiny_base") == \
        presets.names()


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.slow
@pytest.mark.parametrize("preset", presets.names())
def test_tiny_config_of_every_preset_trains_two_finite_steps(preset, tmp_path):
    """Each shipped tiny config (the warm-started model, the arithmetic task, the real reward)
    trains two steps: finite parameters and metrics, the policy changes, no skipped update, the
    preset's number of updates, trainer and sampler log-probs agree, a critic reports its loss."""
    path = CONFIGS / f"tiny_{preset}.yaml"
    alg = load_config(path).algorithm
    assert alg.name == preset
    batch = 2  # prompts: at least 4 rows, split evenly into the preset's minibatches (DAPO: 16)
    while batch * alg.group_size < 4 or (batch * alg.group_size) % alg.num_minibatches:
        batch += 1
    cfg = load_config(path, ["train.steps=2", f"data.batch_size={batch}", "eval.enabled=false",
                             "checkpoint.enabled=false", "optim.warmup_steps=0", "rewards.workers=0"])
    assert cfg.model.path == "builtin:tiny-arith" and cfg.sampling.max_new_tokens == 48
    trainer = Trainer(cfg, tmp_path / "run", echo=lambda s: None, progress=False)
    before = _leaves(trainer.state.params)
    try:
        trainer.run()
    finally:
        trainer.close()
    after = _leaves(trainer.state.params)
    assert all(np.all(np.isfinite(a)) for a in after)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after)), "the policy must change"
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        for k, v in r.items():
            assert not isinstance(v, str), f"{k} is not finite: {v}"
        assert r["skipped_updates"] == 0 and 0 <= r["accuracy"] <= 1
        assert r["updates"] == alg.ppo_epochs * alg.num_minibatches
        assert abs(r["sampler_logp_abs_diff"]) < 1e-4, "trainer and sampler log-probs agree"
        assert r["response_length/mean"] > 5  # the warm-started model writes real solutions
    if alg.critic != "none":
        assert "policy/critic_loss" in records[-1]


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("qwen2.5-math-*.yaml")), ids=lambda p: p.stem)
def test_paper_configs_need_their_paths_and_then_validate(path):
    from sspo_jax.algorithms.config import ConfigError

    with pytest.raises(ConfigError, match=r"is required .*\?\?\?"):
        load_config(path)
    cfg = load_config(path, ["model.path=/models/q", "data.path=/data/train.jsonl", "eval.path=/data/test.jsonl"])
    assert cfg.algorithm.name == path.stem.split("_", 1)[1]
    assert cfg.rows == 1024 and cfg.optim.lr == 1e-6 and cfg.sampling.max_new_tokens == 3072
    assert cfg.rows // cfg.algorithm.num_minibatches % cfg.micro_batch_size == 0


def test_there_is_a_paper_config_for_every_preset_and_the_7b_sspo():
    names = {p.stem for p in CONFIGS.glob("qwen2.5-math-*.yaml")}
    assert {f"qwen2.5-math-1.5b_{p}" for p in presets.names()} | {"qwen2.5-math-7b_sspo"} <= names


def test_the_readme_model_and_data_yaml_loads_as_printed(tmp_path):
    """The README's "Bring your own model and data" block, with its paths pointing at real files."""
    import re

    from sspo_jax.train.config import load_config

    readme = (CONFIGS.parent / "README.md").read_text()
    section = readme[readme.index("## Bring your own model and data"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    for name in ("gsm8k_train.jsonl", "gsm8k_test.jsonl"):
        (tmp_path / name).write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    text = block.replace("/data/", f"{tmp_path}/").replace("/models/", f"{tmp_path}/")
    (tmp_path / "mine.yaml").write_text(text)
    cfg = load_config(tmp_path / "mine.yaml")
    assert cfg.model.path == f"{tmp_path}/Qwen2.5-Math-1.5B" and cfg.algorithm.name == "sspo"
    assert cfg.data.max_prompt_len <= max(cfg.sampling.prompt_buckets) and cfg.eval.max_new_tokens == 1024
