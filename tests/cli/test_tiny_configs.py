"""Every shipped tiny config trains end to end through the CLI (one fast step each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sspo_jax.algorithms import presets
from sspo_jax.cli import main
from sspo_jax.train import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_there_is_a_tiny_config_for_every_preset():
    assert sorted(p.stem.removeprefix("tiny_") for p in CONFIGS.glob("tiny_*.yaml") if p.stem != "tiny_base") == \
        presets.names()


@pytest.mark.slow
@pytest.mark.parametrize("preset", presets.names())
def test_tiny_config_trains_one_step(preset, tmp_path):
    path = CONFIGS / f"tiny_{preset}.yaml"
    cfg = load_config(path)
    assert cfg.algorithm.name == preset and cfg.model.path == "builtin:tiny-arith"
    batch = 4 if cfg.algorithm.group_size == 1 else 2
    args = ["train", "--config", str(path), "--run-dir", str(tmp_path / "run"), "--no-progress",
            "--set", "train.steps=1", "--set", f"data.batch_size={batch}", "--set", "eval.size=4",
            "--set", "sampling.max_new_tokens=48", "--set", "rewards.workers=0"]
    assert main(args) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["step"] == 1]
    assert record["skipped_updates"] == 0 and 0 <= record["accuracy"] <= 1
    assert record["response_length/mean"] > 5  # the warm-started model writes real solutions


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
