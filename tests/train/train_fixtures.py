"""A tiny random Qwen2 checkpoint with an HF tokenizer on disk, and fast trainer configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import nnx

from sspo_jax.models import Qwen2Config, Qwen2ForCausalLM, save_pretrained
from sspo_jax.rewards import RewardConfig, RewardOutput, register_reward
from sspo_jax.train.config import load_config
from tests.data.data_tokenizers import hf_tokenizer


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    """Writes tokenizer files and a random tiny Qwen2 (vocab = the tokenizer's) to `path`."""
    path.mkdir(parents=True, exist_ok=True)
    tok = hf_tokenizer(chat=False)
    tok.save_pretrained(str(path))
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rope_theta=10_000.0, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    save_pretrained(Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(seed)), str(path))
    return path


def fast_overrides(model_dir: Path, preset: str, steps: int = 2) -> list[str]:
    """Settings that make a run take seconds: 2 prompts x the preset's G, 8 new tokens."""
    return [
        f"model.path={model_dir}", f"algorithm.preset={preset}", f"train.steps={steps}",
        "data.batch_size=2", "data.size=64", "data.max_prompt_len=48", "data.template=plain",
        "data.prompt_template={prompt}", "sampling.max_new_tokens=8", "sampling.prompt_buckets=[32,64]",
        "rewards.workers=0", "eval.size=4", "eval.batch_size=4", "checkpoint.every=1", "logging.progress=false",
        "logging.tensorboard=false", "optim.lr=1e-3",
    ]


def fast_config(model_dir: Path, preset: str, run_dir: Path, *extra: str, steps: int = 2):
    return load_config(None, [*fast_overrides(model_dir, preset, steps), f"run_dir={run_dir}", *extra])


@register_reward("test_digit_share", overwrite=True)  # the kill harness registers the same reward
def digit_share(inp, cfg):
    """A dense test reward a random model can earn: the share of digit characters."""
    return RewardOutput(np.array([sum(c.isdigit() for c in r) / max(len(r), 1) for r in inp.responses], np.float32))


def digit_share_config(model_dir: Path, preset: str, run_dir: Path, *extra: str, steps: int):
    """`fast_config` without evaluation, trained on the dense `digit_share` reward (dynamic sampling
    filters on that reward: a random model's correctness is 0 everywhere)."""
    from sspo_jax.algorithms import presets

    if presets.get(preset).dynamic_sampling:
        extra = ("algorithm.dynamic_sampling_metric=reward", *extra)
    cfg = fast_config(model_dir, preset, run_dir, "eval.enabled=false", *extra, steps=steps)
    return cfg.replace(rewards=RewardConfig(weights={"test_digit_share": 1.0}, workers=0))
