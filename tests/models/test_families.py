"""Qwen3 and Llama without torch: config reading and refusals, HF round trip of the config, KV-cache
decoding through q/k norms and llama3 RoPE, export layout, critics from such checkpoints."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

from sspo_jax.models import (
    DecoderConfig,
    Llama3RopeScaling,
    ModelError,
    PromptCritic,
    Qwen2Config,
    TokenValueModel,
    decode_step,
    from_pretrained,
    init_cache,
    prefill,
    save_pretrained,
)
from sspo_jax.models.rope import rope_inv_freq
from tests.models.qwen2_fixtures import FAMILIES, padded_batch, random_policy, tiny_config

BASE = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=64)
LLAMA3 = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=8192)


def test_qwen3_and_llama_configs_from_hf_dicts():
    q3 = DecoderConfig.from_hf_dict({**BASE, "model_type": "qwen3", "attention_bias": False,
                                     "rope_parameters": {"rope_type": "default",
                                                         "rope_theta": 1e6}})
    assert (q3.qk_norm, q3.qkv_bias, q3.head_dim, q3.rope_scaling) == (True, False, 128, None)
    assert DecoderConfig.from_hf_dict({**BASE, "model_type": "qwen3", "head_dim": 24}).head_dim == 24
    new = DecoderConfig.from_hf_dict({**BASE, "model_type": "llama", "max_position_embeddings": 4096,
                                      "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5,
                                                          **LLAMA3}})
    old = DecoderConfig.from_hf_dict({**BASE, "model_type": "llama", "max_position_embeddings": 4096,
                                      "rope_theta": 5e5, "rope_scaling": {"type": "llama3", **LLAMA3}})
    assert new == old and new.rope_scaling == Llama3RopeScaling(**LLAMA3)
    assert (new.qk_norm, new.qkv_bias, new.head_dim, new.rope_theta) == (False, False, 8, 5e5)
    no_omp = {k: v for k, v in LLAMA3.items() if k != "original_max_position_embeddings"}
    fallback = DecoderConfig.from_hf_dict({**BASE, "model_type": "llama",
                                           "max_position_embeddings": 4096,
                                           "rope_parameters": {"rope_type": "llama3", **no_omp}})
    assert fallback.rope_scaling.original_max_position_embeddings == 4096  # as transformers does


@pytest.mark.parametrize("d,message", [
    (dict(model_type="llama", attention_bias=True), "'attention_bias'=true for model_type 'llama'"),
    (dict(model_type="llama", mlp_bias=True), "'mlp_bias'=true"),
    (dict(model_type="qwen3", attention_bias=True), "'attention_bias'=true for model_type 'qwen3'"),
    (dict(model_type="qwen3", use_sliding_window=True), "sliding-window"),
    (dict(model_type="qwen3", layer_types=["sliding_attention"]), "sliding-window"),
    (dict(model_type="llama", rope_parameters={"rope_type": "yarn", "factor": 4.0}),
     "RoPE type 'yarn'; implemented: default, llama3"),
    (dict(model_type="llama", rope_parameters={"rope_type": "llama3", "factor": 8.0}),
     "llama3 RoPE lacks key.*low_freq_factor, high_freq_factor"),
    (dict(model_type="llama", rope_parameters={"rope_type": "llama3", **LLAMA3,
                                               "high_freq_factor": 0.5}),
     "'rope_parameters.high_freq_factor' \\(0.5\\) must exceed"),
    (dict(model_type="gemma"), "unsupported model_type 'gemma'; .*supports qwen2, qwen3, llama"),
])
def test_unsupported_features_are_refused_in_one_line(d, message):
    with pytest.raises(ModelError, match=message) as info:
        DecoderConfig.from_hf_dict({**BASE, **d})
    assert "\n" not in str(info.value)


def test_family_flags_are_checked_on_construction():
    with pytest.raises(ModelError, match="'qkv_bias' must be false for model_type 'llama'"):
        tiny_config(model_type="llama", qkv_bias=True)
    with pytest.raises(ModelError, match="'qk_norm' must be true for model_type 'qwen3'"):
        tiny_config(model_type="qwen3", qk_norm=False)
    with pytest.raises(ModelError, match="unsupported model_type 'mistral'"):
        tiny_config(model_type="mistral")
    assert Qwen2Config is DecoderConfig and tiny_config().qkv_bias and not tiny_config().qk_norm


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_config_round_trips_through_hf_dict(family):
    cfg = tiny_config(**FAMILIES[family], tie_word_embeddings=True, eos_token_id=[3, 5])
    d = cfg.to_hf_dict()
    assert d["model_type"] == family
    assert DecoderConfig.from_hf_dict(json.loads(json.dumps(d))) == cfg


def test_llama3_inv_freq_bands():
    """Short wavelengths keep their frequency, long ones are divided by the factor, the band in
    between is interpolated; values are monotone and lie between the two extremes."""
    scaling = Llama3RopeScaling(8.0, 1.0, 4.0, 64)
    base = rope_inv_freq(64, 10_000.0)
    got = rope_inv_freq(64, 10_000.0, scaling)
    assert got.dtype == np.float32 and got.shape == (32,)
    wavelen = 2 * np.pi / base
    high = wavelen < 64 / 4
    low = wavelen > 64 / 1
    assert high.any() and low.any() and (~high & ~low).any()
    np.testing.assert_array_equal(got[high], base[high])
    np.testing.assert_allclose(got[low], base[low] / 8, rtol=1e-6)
    mid = ~high & ~low
    assert np.all(got[mid] <= base[mid]) and np.all(got[mid] >= base[mid] / 8)
    assert np.all(np.diff(got) < 0)


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def family_policy(request):
    return request.param, random_policy(7, **FAMILIES[request.param], tie_word_embeddings=False)


def test_kv_cache_decoding_matches_full_forward(family_policy):
    """The decode path (fused per-layer weights, q/k norm, scaled RoPE) equals the full forward."""
    _, model = family_policy
    graphdef, params = nnx.split(model, nnx.Param)
    pw, rw = 6, 4
    tokens, mask, _ = padded_batch(np.random.default_rng(0), model.config.vocab_size, [6, 2, 4],
                                   [rw] * 3, pw, rw)
    full = jax.jit(lambda p, t, m: nnx.merge(graphdef, p)(t, m))(params, tokens, mask)
    pre = jax.jit(lambda p, t, m, c: prefill(nnx.merge(graphdef, p), t, m, c))
    step = jax.jit(lambda p, t, c: decode_step(nnx.merge(graphdef, p), t, c), donate_argnums=2)
    cache = init_cache(model.config, batch=3, max_len=pw + rw)
    assert cache.keys[0].shape == (3, model.config.num_key_value_heads, pw + rw,
                                   model.config.head_dim)
    logits, cache = pre(params, tokens[:, :pw], mask[:, :pw], cache)
    np.testing.assert_allclose(logits, full[:, pw - 1], atol=1e-4)
    for i in range(rw):
        logits, cache = step(params, jnp.asarray(tokens[:, pw + i]), cache)
        np.testing.assert_allclose(logits, full[:, pw + i], atol=1e-4)


def test_family_features_change_the_output(family_policy):
    """The q/k norms (qwen3) and the llama3 remapping (llama) are actually used."""
    family, model = family_policy
    tokens, mask, _ = padded_batch(np.random.default_rng(1), model.config.vocab_size, [5, 3],
                                   [4, 6], 5, 6)
    base = np.asarray(model(tokens, mask))
    if family == "qwen3":
        changed = random_policy(7, **FAMILIES[family], tie_word_embeddings=False)
        changed.model.layers.q_norm.set_value(jnp.ones_like(changed.model.layers.q_norm[...]))
    else:
        changed = random_policy(7, **{**FAMILIES[family], "rope_scaling": None},
                                tie_word_embeddings=False)
    assert np.abs(np.asarray(changed(tokens, mask)) - base)[mask.astype(bool)].max() > 1e-3


def test_export_layout_and_reload(family_policy, tmp_path):
    family, model = family_policy
    save_pretrained(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    arch = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}[family]
    assert cfg["model_type"] == family and cfg["architectures"] == [arch]
    with safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as f:
        names = set(f.keys())
        assert not any(n.endswith("_proj.bias") for n in names)  # neither family has biases
        has_norm = "model.layers.1.self_attn.q_norm.weight" in names
        assert has_norm == (family == "qwen3")
        if has_norm:
            assert f.get_tensor("model.layers.1.self_attn.k_norm.weight").shape == (12,)
    reloaded = from_pretrained(tmp_path)
    assert reloaded.config == model.config
    _, a = nnx.split(model, nnx.Param)
    _, b = nnx.split(reloaded, nnx.Param)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_critics_build_from_qwen3_and_llama_checkpoints(family_policy, tmp_path):
    _, model = family_policy
    save_pretrained(model, tmp_path)
    value = TokenValueModel.from_policy_checkpoint(tmp_path, seed=1)
    prompt = PromptCritic.from_policy_checkpoint(tmp_path, seed=2)
    assert value.config == model.config and not hasattr(value, "lm_head")
    p, r = 5, 3
    tokens, mask, prompt_mask = padded_batch(np.random.default_rng(2), model.config.vocab_size,
                                             [5, 2], [3, 1], p, r)
    hidden = np.asarray(model.hidden_states(tokens, mask))
    values = np.asarray(value(tokens, mask))
    assert values.shape == tokens.shape and values.dtype == np.float32
    valid = (mask[:, 1:] == 1) & (mask[:, :-1] == 1)
    want = np.asarray(value.value_head(jnp.asarray(hidden[:, :-1])))
    np.testing.assert_allclose(values[:, 1:][valid], want[valid], atol=1e-6)
    assert np.all(values[:, 1:][~valid] == 0) and np.all(values[:, 0] == 0)
    logit = np.asarray(prompt(tokens, mask, prompt_mask=prompt_mask))
    want = np.asarray(prompt.value_head(jnp.asarray(hidden[:, p - 1])))
    np.testing.assert_allclose(logit, want, atol=1e-6)
    # the backbone is the checkpoint's: q/k norms (qwen3) loaded, not left at their init
    for name in ("q_kernel", "q_norm"):
        if hasattr(model.model.layers, name):
            np.testing.assert_array_equal(getattr(prompt.model.layers, name)[...],
                                          getattr(model.model.layers, name)[...])


def test_dataclass_replace_keeps_family():
    cfg = tiny_config(**FAMILIES["llama"])
    assert dataclasses.replace(cfg, rope_theta=5e5).model_type == "llama"
