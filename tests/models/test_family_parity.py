"""Parity of the Flax Qwen3 and Llama with transformers' Qwen3ForCausalLM and LlamaForCausalLM:
logits (left and right padding, tied and untied head, llama3 RoPE), RoPE frequencies, greedy
KV-cache decoding against `generate()`, and export loaded back by transformers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen3Config
from transformers import Qwen3ForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from sspo_jax.models import (
    Llama3RopeScaling,
    decode_step,
    from_pretrained,
    init_cache,
    prefill,
    save_pretrained,
)
from sspo_jax.models.rope import rope_inv_freq
from tests.models.qwen2_fixtures import FAMILIES, padded_batch, positions_of, random_policy

pytestmark = pytest.mark.torch

VOCAB = 384
# llama3 scaling with a short original context, so that it remaps most frequencies at these widths
LLAMA3 = {"rope_type": "llama3", "rope_theta": 10_000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
CASES = [("qwen3", True), ("qwen3", False), ("llama", True), ("llama", False)]


def _hf_model(family: str, tied: bool, seed: int = 0):
    """A random tiny HF model: GQA 4/2, hidden 64; Qwen3 head_dim 24 (!= 64 / 4); Llama head_dim
    16 (tied) or 32 (untied) with llama3 RoPE. Norms are non-trivial and the matrices twice the
    default init, so that greedy choices are not near-ties."""
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=136, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=tied, rms_norm_eps=1e-6, eos_token_id=None, pad_token_id=0)
    if family == "qwen3":
        cfg = Qwen3Config(**common, head_dim=24,
                          rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
        model = Qwen3ForCausalLM(cfg)
    else:
        cfg = LlamaConfig(**common, head_dim=16 if tied else 32, rope_parameters=dict(LLAMA3))
        model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.ndim == 2:
                p.mul_(2.0)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(family, tied) -> (HF model, its directory, the Flax model loaded from it); built once."""
    built = {}

    def get(family, tied):
        if (family, tied) not in built:
            hf = _hf_model(family, tied)
            path = tmp_path_factory.mktemp(f"{family}_{tied}")
            hf.save_pretrained(path)
            built[family, tied] = hf, path, from_pretrained(path)
        return built[family, tied]

    return get


def _torch_logits(model, tokens, mask) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    position_ids=torch.tensor(positions_of(mask), dtype=torch.long))
    return out.logits.float().numpy()


def _batch(vocab, seed=0):
    # left-padded prompts, right-padded responses, one full row
    return padded_batch(np.random.default_rng(seed), vocab, prompt_lens=[5, 2, 7, 1],
                        resp_lens=[4, 6, 0, 3], prompt_width=7, resp_width=6)


def _max_diff_on_mask(got, want, mask) -> float:
    keep = mask.astype(bool)
    return float(np.abs(np.asarray(got)[keep] - want[keep]).max())


@pytest.mark.parametrize("family,tied", CASES, ids=[f"{f}_{'tied' if t else 'untied'}"
                                                    for f, t in CASES])
def test_logits_match_transformers(checkpoints, family, tied):
    hf, _, model = checkpoints(family, tied)
    assert model.config.model_type == family and (model.lm_head is None) == tied
    assert model.config.head_dim == hf.config.head_dim
    tokens, mask, _ = _batch(VOCAB)
    want = _torch_logits(hf, tokens, mask)
    got = model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
    assert got.shape == want.shape and np.isfinite(np.asarray(got)).all()
    assert np.abs(want).max() > 0.5  # logits of a size where 1e-4 means something
    assert _max_diff_on_mask(got, want, mask) < 1e-4


def test_rope_frequencies_match_transformers(checkpoints):
    hf, _, model = checkpoints("llama", False)
    cfg = model.config
    assert cfg.rope_scaling == Llama3RopeScaling(8.0, 1.0, 4.0, 16)
    ours = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    np.testing.assert_allclose(ours, hf.model.rotary_emb.inv_freq.numpy(), rtol=1e-6, atol=0)
    # Llama 3.1 8B's settings: 64 frequencies over all three bands
    real = LlamaConfig(hidden_size=4096, num_attention_heads=32, max_position_embeddings=131072,
                       rope_parameters={"rope_type": "llama3", "rope_theta": 500_000.0,
                                        "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 8192})
    want, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](real)
    assert attention_factor == 1.0
    got = rope_inv_freq(128, 500_000.0, Llama3RopeScaling(8.0, 1.0, 4.0, 8192))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=0)
    assert not np.allclose(got, rope_inv_freq(128, 500_000.0), rtol=1e-3)


@pytest.mark.parametrize("family,tied", [("qwen3", False), ("llama", True)])
def test_greedy_kv_cache_decoding_matches_generate(checkpoints, family, tied):
    hf, _, model = checkpoints(family, tied)
    rng = np.random.default_rng(1)
    width, new = 7, 5
    tokens = np.zeros((3, width), np.int64)
    mask = np.zeros((3, width), np.int64)
    for i, n in enumerate([7, 3, 5]):  # left padding
        tokens[i, width - n:] = rng.integers(1, VOCAB, n)
        mask[i, width - n:] = 1
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                          max_new_tokens=new, min_new_tokens=new, do_sample=False,
                          eos_token_id=None, pad_token_id=0).numpy()[:, width:]
    graphdef, params = nnx.split(model, nnx.Param)
    pre = jax.jit(lambda p, t, m, c: prefill(nnx.merge(graphdef, p), t, m, c))
    step = jax.jit(lambda p, t, c: decode_step(nnx.merge(graphdef, p), t, c), donate_argnums=2)
    logits, cache = pre(params, jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, jnp.int32),
                        init_cache(model.config, 3, width + new))
    ours = []
    for _ in range(new):
        tok = jnp.argmax(logits, -1).astype(jnp.int32)
        top2 = np.sort(np.asarray(logits), -1)[:, -2:]
        assert np.all(top2[:, 1] - top2[:, 0] > 1e-3)  # no near-tie decides the comparison
        ours.append(np.asarray(tok))
        logits, cache = step(params, tok, cache)
    np.testing.assert_array_equal(np.stack(ours, 1), ref)


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_export_loads_in_transformers(tmp_path, family):
    arch = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}[family]
    for tied in (True, False):
        flax_model = random_policy(seed=5, **FAMILIES[family], tie_word_embeddings=tied)
        out = tmp_path / f"tied_{tied}"
        save_pretrained(flax_model, out)
        hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        assert type(hf).__name__ == arch and hf.config.tie_word_embeddings == tied
        if family == "llama":
            assert hf.config.rope_parameters["rope_type"] == "llama3"
        tokens, mask, _ = padded_batch(np.random.default_rng(2), flax_model.config.vocab_size,
                                       [5, 2, 7], [4, 6, 0], 7, 6)
        want = _torch_logits(hf, tokens, mask)
        got = flax_model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
        assert _max_diff_on_mask(got, want, mask) < 1e-5
