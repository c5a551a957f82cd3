"""The tiny models shipped in ``sspo_jax/assets`` (made by ``scripts/make_tiny_model.py``):
``tiny-arith`` (the default, symbolic arithmetic) and ``tiny-word`` (the same task told in words).
Each loads offline, is small, its tokenizer splits digits, and its greedy answers to held-out
problems are multi-step and partly (not fully) right."""

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

ASSETS = os.path.join(os.path.dirname(sspo_jax.__file__), "assets")
MAX_NEW_TOKENS = {"tiny-arith": 64, "tiny-word": 96}


@pytest.fixture(scope="module", params=sorted(MAX_NEW_TOKENS))
def asset(request) -> str:
    return os.path.join(ASSETS, request.param)


@pytest.fixture(scope="module")
def meta(asset) -> dict:
    with open(os.path.join(asset, "meta.json"), encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def tokenizer(asset):
    return AutoTokenizer.from_pretrained(asset, local_files_only=True)


def test_every_asset_is_tested():
    assert sorted(os.listdir(ASSETS)) == sorted(MAX_NEW_TOKENS)


@pytest.fixture(scope="module")
def data_cfg(meta) -> DataConfig:
    d = meta["data"]
    return DataConfig(source="arithmetic", arithmetic=ArithmeticConfig(**d["arithmetic"]), template=d["template"],
                      prompt_template=d["prompt_template"], instruction=d["instruction"],
                      add_special_tokens=d["add_special_tokens"], generator_seed=meta["problem_seeds"]["eval"],
                      size=32, batch_size=32, group_size=1, shuffle=False)


def test_asset_files_and_size(asset):
    names = set(os.listdir(asset))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "meta.json"} <= names
    total = sum(os.path.getsize(os.path.join(asset, n)) for n in names)
    assert total <= 10 * 1024 * 1024


def test_tokenizer_loads_offline_with_special_tokens(asset, tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    with open(os.path.join(asset, "config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    assert config["eos_token_id"] == tokenizer.eos_token_id
    assert config["pad_token_id"] == tokenizer.pad_token_id
    assert config["bos_token_id"] == tokenizer.eos_token_id  # Qwen convention: BOS id = <|endoftext|>
    assert config["vocab_size"] == len(tokenizer) <= 512
    assert config["tie_word_embeddings"] is True
    assert config["num_key_value_heads"] < config["num_attention_heads"]


def test_tokenizer_round_trip_and_digit_split(tokenizer, meta):
    item = problems(3, seed=123, cfg=ArithmeticConfig(**meta["data"]["arithmetic"]))[2]
    text = f"{item['prompt']}\n{item['solution']}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("12345, 678.", add_special_tokens=False)["input_ids"])
    assert pieces[:5] == list("12345")
    assert "," in pieces and "." in pieces  # delimiters are tokens of their own
    assert tokenizer.eos_token_id not in ids and tokenizer.pad_token_id not in ids


def test_greedy_generation_is_multi_step_and_partly_right(asset, tokenizer, data_cfg):
    model = from_pretrained(asset)
    assert isinstance(model, Qwen2ForCausalLM)
    batch = next(PromptBatcher(build_source(data_cfg), tokenizer, data_cfg))
    cfg = SamplingConfig(max_new_tokens=MAX_NEW_TOKENS[os.path.basename(asset)], temperature=0.0, eos_token_ids=(tokenizer.eos_token_id,),
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
