"""Parity of the Flax Qwen2 with transformers' PyTorch Qwen2ForCausalLM (load, export, bf16)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors import safe_open
from transformers import AutoModelForCausalLM
from transformers import Qwen2Config as HFQwen2Config
from transformers import Qwen2ForCausalLM as HFQwen2ForCausalLM

from sspo_jax.models import from_pretrained, save_pretrained
from tests.models.qwen2_fixtures import padded_batch, positions_of, random_policy

pytestmark = pytest.mark.torch

# (name, heads, kv heads, hidden, tied, rope theta): GQA ratios 1, 2, 4 and an odd head count.
CASES = [
    ("mha_tied", 4, 4, 64, True, 10_000.0),
    ("gqa2_untied", 4, 2, 64, False, 1_000_000.0),
    ("gqa4_tied", 4, 1, 32, True, 1_000_000.0),
    ("odd3_untied", 3, 1, 48, False, 10_000.0),
]


def _hf_model(heads, kv, hidden, tied, theta, seed=0) -> HFQwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = HFQwen2Config(
        vocab_size=384, hidden_size=hidden, intermediate_size=2 * hidden + 8,
        num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv,
        max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": theta},
        tie_word_embeddings=tied, rms_norm_eps=1e-6)
    model = HFQwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # make biases and norm scales non-trivial
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.2)
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model


def _torch_logits(model, tokens, mask) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    position_ids=torch.tensor(positions_of(mask), dtype=torch.long))
    return out.logits.float().numpy()


def _batch(vocab, seed=0):
    rng = np.random.default_rng(seed)
    # different prompt and response lengths: left padding, right padding, a full row
    return padded_batch(rng, vocab, prompt_lens=[5, 2, 7, 1], resp_lens=[4, 6, 0, 3],
                        prompt_width=7, resp_width=6)


def _assert_close_on_mask(got, want, mask, atol):
    keep = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[keep], want[keep], atol=atol, rtol=0)


@pytest.mark.parametrize("name,heads,kv,hidden,tied,theta", CASES, ids=[c[0] for c in CASES])
def test_logits_match_transformers(tmp_path, name, heads, kv, hidden, tied, theta):
    hf = _hf_model(heads, kv, hidden, tied, theta)
    hf.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path)
    assert (model.lm_head is None) == tied
    tokens, mask, _ = _batch(hf.config.vocab_size)
    want = _torch_logits(hf, tokens, mask)
    got = model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask))  # positions derived
    assert got.shape == want.shape and got.dtype == jnp.float32
    assert np.isfinite(np.asarray(got)).all()  # fully padded query rows give no NaN
    _assert_close_on_mask(got, want, mask, atol=1e-4)
    explicit = model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask),
                     positions=jnp.asarray(positions_of(mask)))
    np.testing.assert_array_equal(np.asarray(explicit), np.asarray(got))


def test_export_round_trip_loads_in_transformers(tmp_path):
    for tied in (True, False):
        flax_model = random_policy(seed=3, tie_word_embeddings=tied, num_key_value_heads=1)
        out = tmp_path / f"tied_{tied}"
        save_pretrained(flax_model, out)
        hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        assert type(hf).__name__ == "Qwen2ForCausalLM"
        assert hf.config.tie_word_embeddings == tied
        with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
            assert ("lm_head.weight" in set(f.keys())) == (not tied)  # never invented or dropped
        tokens, mask, _ = _batch(flax_model.config.vocab_size, seed=1)
        want = _torch_logits(hf, tokens, mask)
        got = flax_model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
        _assert_close_on_mask(got, want, mask, atol=1e-5)


def test_sharded_export_round_trip(tmp_path):
    flax_model = random_policy(seed=4, tie_word_embeddings=False)
    save_pretrained(flax_model, tmp_path, max_shard_bytes=40_000)
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    reloaded = from_pretrained(tmp_path)
    tokens, mask, _ = _batch(flax_model.config.vocab_size, seed=2)
    want = _torch_logits(hf, tokens, mask)
    _assert_close_on_mask(flax_model(jnp.asarray(tokens), jnp.asarray(mask)), want, mask, 1e-5)
    _assert_close_on_mask(reloaded(jnp.asarray(tokens), jnp.asarray(mask)), want, mask, 1e-5)


def test_bf16_checkpoint_loads_into_fp32_and_bf16(tmp_path):
    hf = _hf_model(4, 2, 32, True, 10_000.0, seed=5).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    ref = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    tokens, mask, _ = _batch(hf.config.vocab_size, seed=3)
    want = _torch_logits(ref, tokens, mask)
    model = from_pretrained(tmp_path, dtype=jnp.float32)
    assert model.model.embed[...].dtype == jnp.float32
    _assert_close_on_mask(model(jnp.asarray(tokens), jnp.asarray(mask)), want, mask, 1e-4)
    model16 = from_pretrained(tmp_path, dtype=jnp.bfloat16)
    assert model16.model.layers.q_kernel[...].dtype == jnp.bfloat16
    got16 = np.asarray(model16(jnp.asarray(tokens), jnp.asarray(mask)))
    keep = mask.astype(bool)
    assert got16.dtype == np.float32
    assert np.abs(got16[keep] - want[keep]).max() < 0.1 * np.abs(want[keep]).max()
    # export in bf16 and reload: the weights round-trip bit for bit
    save_pretrained(model16, tmp_path / "export16")
    again = from_pretrained(tmp_path / "export16", dtype=jnp.bfloat16)
    _, p1 = nnx.split(model16, nnx.Param)
    _, p2 = nnx.split(again, nnx.Param)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), p1, p2)


def test_bf16_compute_close_to_fp32(tmp_path):
    hf = _hf_model(4, 2, 32, False, 10_000.0, seed=6)
    hf.save_pretrained(tmp_path)
    tokens, mask, _ = _batch(hf.config.vocab_size, seed=4)
    want = _torch_logits(hf, tokens, mask)
    model = from_pretrained(tmp_path, compute_dtype=jnp.bfloat16)
    assert model.model.layers.q_kernel[...].dtype == jnp.float32  # fp32 master weights
    got = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))
    keep = mask.astype(bool)
    assert np.abs(got[keep] - want[keep]).max() < 0.1 * np.abs(want[keep]).max()
