"""The tiny default model shipped in ``sspo_jax/assets/tiny-arith`` (made by
``scripts/make_tiny_model.py``): it loads offline, is small, its tokenizer splits digits, and its
greedy answers to held-out arithmetic problems are multi-step and partly (not fully) right."""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np
import pytest
from flax import nnx
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import sspo_jax
from sspo_jax.data import ArithmeticConfig, DataConfig, PromptBatcher, build_source, problems
from sspo_jax.models import Qwen2ForCausalLM, from_pretrained
from sspo_jax.rewards import exact_match_reward
from sspo_jax.rollout import SamplingConfig, generate

ASSET = os.path.join(os.path.dirname(sspo_jax.__file__), "assets", "tiny-arith")


@pytest.fixture(scope="module")
def meta() -> dict:
    with open(os.path.join(ASSET, "meta.json"), encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ASSET, local_files_only=True)


@pytest.fixture(scope="module")
def data_cfg(meta) -> DataConfig:
    d = meta["data"]
    return DataConfig(source="arithmetic", arithmetic=ArithmeticConfig(**d["arithmetic"]), template=d["template"],
                      prompt_template=d["prompt_template"], instruction=d["instruction"],
                      add_special_tokens=d["add_special_tokens"], generator_seed=meta["problem_seeds"]["eval"],
                      size=32, batch_size=32, group_size=1, shuffle=False)


def test_asset_files_and_size():
    names = set(os.listdir(ASSET))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "meta.json"} <= names
    total = sum(os.path.getsize(os.path.join(ASSET, n)) for n in names)
    assert total <= 10 * 1024 * 1024


def test_tokenizer_loads_offline_with_special_tokens(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    with open(os.path.join(ASSET, "config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    assert config["eos_token_id"] == tokenizer.eos_token_id
    assert config["pad_token_id"] == tokenizer.pad_token_id
    assert config["bos_token_id"] == tokenizer.eos_token_id  # Qwen convention: BOS id = <|endoftext|>
    assert config["vocab_size"] == len(tokenizer) <= 512
    assert config["tie_word_embeddings"] is True
    assert config["num_key_value_heads"] < config["num_attention_heads"]


def test_tokenizer_round_trip_and_digit_split(tokenizer):
    solution = problems(3, seed=123, cfg=ArithmeticConfig())[2]["solution"]
    text = f"Compute (17+25)*3-4.\n{solution}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("12345, 678.", add_special_tokens=False)["input_ids"])
    assert pieces[:5] == list("12345")
    assert "," in pieces and "." in pieces  # delimiters are tokens of their own
    assert tokenizer.eos_token_id not in ids and tokenizer.pad_token_id not in ids


def test_greedy_generation_is_multi_step_and_partly_right(tokenizer, data_cfg):
    model = from_pretrained(ASSET)
    assert isinstance(model, Qwen2ForCausalLM)
    batch = next(PromptBatcher(build_source(data_cfg), tokenizer, data_cfg))
    cfg = SamplingConfig(max_new_tokens=64, temperature=0.0, eos_token_ids=(tokenizer.eos_token_id,),
                         pad_token_id=tokenizer.pad_token_id)
    out = jax.device_get(generate(nnx.split(model, nnx.Param), batch.input_ids, batch.attention_mask, cfg,
                                  jax.random.key(0)))
    p = out.prompt_len
    responses = [tokenizer.decode(row[p:][m[p:]].tolist(), skip_special_tokens=True)
                 for row, m in zip(out.tokens, out.response_mask)]
    assert not out.truncated.any()
    steps = [len([s for s in re.split(r"[,.](?=\s|$)", r) if s.strip()]) for r in responses]
    assert np.mean(steps) >= 2.0, responses[:4]
    assert all("\\boxed{" in r for r in responses), responses[:4]
    accuracy = float(np.mean(exact_match_reward(responses, batch.golds).scores))
    assert 0.10 <= accuracy <= 0.70, (accuracy, list(zip(responses, batch.golds))[:4])
