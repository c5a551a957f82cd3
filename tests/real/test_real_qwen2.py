"""The real Qwen2.5-Coder-0.5B-Instruct checkpoint: sspo_jax against transformers.

One transformers fp32 pass (logits and greedy generation) is computed first and the torch model
freed; then one sspo_jax fp32 load serves every test (the bf16-compute test views the same
parameter arrays), so the module holds at most one 0.5B model per framework.
"""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.real.real_common import (
    assert_same_greedy,
    chat_batch,
    jax_greedy,
    jax_logits,
    load_policy,
    transformers_logits,
    transformers_reference,
)

pytestmark = [pytest.mark.real, pytest.mark.torch, pytest.mark.slow]

EOS = 151645  # <|im_end|>
PAD = 151643  # <|endoftext|>
NEW_TOKENS = 32
PROMPTS = ["Write a Python function that adds two numbers.", "Hi!"]


@pytest.fixture(scope="module")
def batch(qwen_dir):
    """Two chat-template prompts of different lengths, left-padded."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(qwen_dir))
    tokens, mask = chat_batch(tok, PROMPTS)
    assert mask[0].sum() != mask[1].sum(), "the rows must differ in length to test left padding"
    return tokens, mask


@pytest.fixture(scope="module")
def reference(qwen_dir, batch):
    """transformers fp32 logits and greedy tokens (computed before the sspo_jax load)."""
    tokens, mask = batch
    return transformers_reference(qwen_dir, tokens, mask, new_tokens=NEW_TOKENS, eos=EOS, pad=PAD)


@pytest.fixture(scope="module")
def policy(qwen_dir, reference):
    """The checkpoint loaded by `sspo_jax.models.from_pretrained` in fp32."""
    return load_policy(qwen_dir)


def test_generation_config_carries_eos(qwen_dir):
    with open(qwen_dir / "generation_config.json", encoding="utf-8") as fh:
        gen = json.load(fh)
    assert gen["eos_token_id"] == EOS and gen["pad_token_id"] == PAD


def test_fp32_logits_match_transformers(policy, batch, reference):
    """fp32 logits within 2e-3 of transformers at every real prompt position.

    Both frameworks compute the same fp32 function; they differ only in summation order (XLA vs
    oneDNN/BLAS blocking, fused vs separate ops) through 24 layers of width 896/4864 and a
    151,936-row head, which gives 7e-5 .. 1.6e-4 on logits up to ~32 (a relative error near 5e-6,
    i.e. tens of fp32 ulps). 2e-3 leaves >10x headroom for other CPUs and thread counts, while
    the smallest real bugs measured on this checkpoint lie far above it: one weight matrix
    scaled by 1.001 moves the logits by 1.4e-2, a wrong RMSNorm epsilon by 0.42.
    """
    tokens, mask = batch
    ours = jax_logits(policy, tokens, mask)
    ref = reference["logits"]
    real = mask.astype(bool)
    assert ours.shape == ref.shape == (*tokens.shape, 151936)
    assert np.abs(ref[real]).max() > 10.0  # real, peaked logits: the bound below is meaningful
    err = np.abs(ours - ref)[real]
    assert err.max() < 2e-3, f"max |logit diff| {err.max():.3g}"
    np.testing.assert_array_equal(ours.argmax(-1)[real], ref.argmax(-1)[real])


def test_greedy_generation_matches_transformers(policy, batch, reference):
    """32 greedy tokens from `sspo_jax.rollout.generate` equal transformers' greedy generate."""
    tokens, mask = batch
    ours = jax_greedy(policy, tokens, mask, new_tokens=NEW_TOKENS, eos=EOS, pad=PAD)
    assert ours.shape == (2, NEW_TOKENS)
    assert_same_greedy(ours, reference["greedy"], PAD)
    assert (reference["greedy"][0] != PAD).sum() >= 16  # a real answer, not an instant stop


def test_export_reloads_in_transformers_with_equal_logits(policy, batch, reference, tmp_path):
    """`save_pretrained` (sharded) then transformers' loader: bit-identical fp32 logits.

    The loaded parameters are the checkpoint's fp32 tensors unchanged, so an exact export gives
    transformers the same weights and hence exactly the reference logits."""
    from sspo_jax.models import save_pretrained

    tokens, mask = batch
    out = tmp_path / "export"
    try:
        save_pretrained(policy, out, max_shard_bytes=1 << 30)
        assert (out / "model.safetensors.index.json").is_file()
        with open(out / "config.json", encoding="utf-8") as fh:
            cfg = json.load(fh)
        assert cfg["model_type"] == "qwen2" and cfg["tie_word_embeddings"] is False
        assert cfg["eos_token_id"] == EOS
        reloaded = transformers_logits(out, tokens, mask)
    finally:
        shutil.rmtree(out, ignore_errors=True)  # 2.5 GB: do not leave it in pytest's tmp dirs
    np.testing.assert_array_equal(reloaded, reference["logits"])


def test_bf16_compute_logits_close_to_fp32_transformers(policy, batch, reference):
    """fp32 parameters with bf16 activations (`from_pretrained(compute_dtype=bfloat16)`).

    bf16 keeps 8 significant bits (relative rounding 2^-9 .. 2^-8), so on logits up to ~32 one
    rounding of the final logit alone is worth up to 0.125; accumulated over 24 layers of bf16
    activations the measured maximum error against transformers fp32 is 0.45 .. 0.56 (mean
    0.04), and transformers' own all-bf16 forward is 0.54 away. Bounds: max < 1.0 and mean < 0.1
    (about 2x the measurements), top-1 agreement >= 95% of positions (measured 100%; the slack
    allows two near-tie flips among ~40 positions). The bf16 logits must also differ from the
    fp32 ones by more than fp32 noise, which shows that bf16 compute actually happened.
    """
    tokens, mask = batch
    view = nnx.eval_shape(lambda: type(policy)(policy.config, rngs=nnx.Rngs(0),
                                               param_dtype=jnp.float32,
                                               compute_dtype=jnp.bfloat16))
    nnx.update(view, nnx.state(policy))  # the same arrays, no second copy
    assert view.compute_dtype == jnp.bfloat16
    ours = jax_logits(view, tokens, mask)
    ref = reference["logits"]
    real = mask.astype(bool)
    err = np.abs(ours - ref)[real]
    agree = (ours.argmax(-1) == ref.argmax(-1))[real].mean()
    assert err.max() < 1.0 and err.mean() < 0.1, (err.max(), err.mean())
    assert agree >= 0.95, f"top-1 agreement {agree:.3f}"
    assert err.max() > 1e-2, "bf16 logits equal fp32 ones: compute_dtype had no effect"
