"""Chunked token log-probs and entropy equal the naive full-vocabulary computation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sspo_jax.models import (
    naive_token_logprobs_and_entropy,
    token_logprobs_and_entropy,
    token_logprobs_from_hidden,
)

B, T, H, V = 2, 10, 16, 50


def _inputs(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    hidden = jax.random.normal(k1, (B, T, H), jnp.float32)
    w = 0.5 * jax.random.normal(k2, (V, H), jnp.float32)
    targets = jax.random.randint(k3, (B, T), 0, V)
    return hidden, w, targets


def _direct(hidden, w, targets):
    """Independent reference: full log_softmax (fine at this size)."""
    logits = np.einsum("bth,vh->btv", np.asarray(hidden, np.float64), np.asarray(w, np.float64))
    logits -= logits.max(-1, keepdims=True)
    logq = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    logp = np.take_along_axis(logq, np.asarray(targets)[..., None], -1)[..., 0]
    return logp, -(np.exp(logq) * logq).sum(-1)


@pytest.mark.parametrize("chunk", [1, 3, 4, 7, 10, 64])
def test_chunked_values_match_direct(chunk):
    hidden, w, targets = _inputs()
    logp, ent = jax.jit(lambda h, w, y: token_logprobs_and_entropy(h, w, y, chunk_size=chunk))(
        hidden, w, targets)
    want_logp, want_ent = _direct(hidden, w, targets)
    assert logp.shape == (B, T) and logp.dtype == jnp.float32 and ent.shape == (B, T)
    np.testing.assert_allclose(logp, want_logp, atol=2e-5)
    np.testing.assert_allclose(ent, want_ent, atol=2e-5)
    assert np.all(np.asarray(ent) >= 0) and np.all(np.asarray(ent) <= np.log(V) + 1e-5)


def _direct_grads(hidden, w, targets, g_logp, g_ent):
    """Independent NumPy reference of d(sum g_logp * logp + g_ent * H)/d(hidden, w) (float64):
    dz = g_logp * (onehot - p) - g_ent * p * (log p + H), dh = dz w, dw = dz^T h."""
    h64, w64 = np.asarray(hidden, np.float64), np.asarray(w, np.float64)
    z = np.einsum("bth,vh->btv", h64, w64)
    z -= z.max(-1, keepdims=True)
    logq = z - np.log(np.exp(z).sum(-1, keepdims=True))
    p = np.exp(logq)
    ent = -(p * logq).sum(-1)
    onehot = np.eye(w64.shape[0])[np.asarray(targets)]
    g_logp, g_ent = np.asarray(g_logp, np.float64), np.asarray(g_ent, np.float64)
    dz = g_logp[..., None] * (onehot - p) - g_ent[..., None] * p * (logq + ent[..., None])
    return np.einsum("btv,vh->bth", dz, w64), np.einsum("btv,bth->vh", dz, h64)


@pytest.mark.parametrize("chunk", [3, 10, 64])
@pytest.mark.parametrize("entropy", [True, False])
def test_gradients_match_the_numpy_reference(chunk, entropy):
    """Gradients of the chunked path (several checkpointed chunks, or one chunk covering T)
    against the analytic gradient in float64; without entropy only g_logp acts."""
    hidden, w, targets = _inputs(5)
    k1, k2 = jax.random.split(jax.random.key(11))
    g_logp = jax.random.normal(k1, (B, T))
    g_ent = jax.random.normal(k2, (B, T)) if entropy else jnp.zeros((B, T))

    def loss(h, w):
        logp, ent = token_logprobs_and_entropy(h, w, targets, chunk_size=chunk, compute_entropy=entropy)
        return jnp.sum(g_logp * logp) + (jnp.sum(g_ent * ent) if entropy else 0.0)

    dh, dw = jax.jit(jax.grad(loss, argnums=(0, 1)))(hidden, w)
    want_dh, want_dw = _direct_grads(hidden, w, targets, g_logp, g_ent)
    np.testing.assert_allclose(dh, want_dh, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(dw, want_dw, atol=2e-5, rtol=1e-5)


def test_bf16_gradients_keep_the_input_dtypes():
    """bf16 hidden states over an fp32 unembedding (bf16 compute, fp32 master weights): the
    gradients come back in each input's dtype and near the fp32 reference."""
    hidden, w, targets = _inputs(6)
    for chunk in (4, 64):
        grad = jax.grad(lambda h, w: jnp.sum(token_logprobs_and_entropy(h, w, targets, chunk_size=chunk)[0]),
                        argnums=(0, 1))
        dh, dw = grad(hidden.astype(jnp.bfloat16), w)
        assert dh.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
        want_dh, want_dw = _direct_grads(hidden, w, targets, jnp.ones((B, T)), jnp.zeros((B, T)))
        np.testing.assert_allclose(np.asarray(dh, np.float32), want_dh, atol=0.1)
        np.testing.assert_allclose(dw, want_dw, atol=0.1 * np.abs(want_dw).max())


@pytest.mark.parametrize("chunk", [3, 4, 10])
def test_chunked_gradients_match_naive(chunk):
    hidden, w, targets = _inputs(1)
    weights = jax.random.normal(jax.random.key(7), (B, T))

    def loss(fn, h, w):
        logp, ent = fn(h, w, targets)
        return jnp.sum(weights * logp) + 0.3 * jnp.sum(ent)

    chunked = jax.jit(jax.grad(lambda h, w: loss(
        lambda *a: token_logprobs_and_entropy(*a, chunk_size=chunk), h, w), argnums=(0, 1)))
    naive = jax.jit(jax.grad(lambda h, w: loss(naive_token_logprobs_and_entropy, h, w),
                             argnums=(0, 1)))
    for got, want in zip(chunked(hidden, w), naive(hidden, w)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_without_entropy_and_hv_layout():
    hidden, w, targets = _inputs(2)
    logp, ent = token_logprobs_and_entropy(hidden, w.T, targets, chunk_size=4,
                                           compute_entropy=False, unembed_layout="hv")
    assert ent is None
    np.testing.assert_allclose(logp, _direct(hidden, w, targets)[0], atol=2e-5)
    with pytest.raises(ValueError, match="unembed_layout"):
        token_logprobs_and_entropy(hidden, w, targets, unembed_layout="x")
    with pytest.raises(ValueError, match="hidden size"):
        token_logprobs_and_entropy(hidden, w.T, targets)


def test_shifted_helper_follows_the_logp_convention():
    hidden, w, tokens = _inputs(3)
    logp, ent = token_logprobs_from_hidden(hidden, w, tokens, chunk_size=3)
    want_logp, want_ent = _direct(hidden[:, :-1], w, tokens[:, 1:])
    np.testing.assert_array_equal(logp[:, 0], 0.0)
    np.testing.assert_array_equal(ent[:, 0], 0.0)
    np.testing.assert_allclose(logp[:, 1:], want_logp, atol=2e-5)
    np.testing.assert_allclose(ent[:, 1:], want_ent, atol=2e-5)


@pytest.mark.parametrize("start", [1, 2, 5, 7])
def test_start_scores_only_the_later_columns(start):
    """`start` (the prompt width) projects only columns >= start: those equal the full result,
    the earlier ones are 0, and the gradient ignores the unscored columns."""
    hidden, w, tokens = _inputs(3)  # T = 10
    full, full_ent = token_logprobs_from_hidden(hidden, w, tokens, chunk_size=3)
    logp, ent = token_logprobs_from_hidden(hidden, w, tokens, chunk_size=3, start=start)
    np.testing.assert_array_equal(logp[:, :start], 0.0)
    np.testing.assert_array_equal(ent[:, :start], 0.0)
    np.testing.assert_allclose(logp[:, start:], full[:, start:], atol=1e-6)
    np.testing.assert_allclose(ent[:, start:], full_ent[:, start:], atol=1e-6)
    grad = jax.grad(lambda h: jnp.sum(token_logprobs_from_hidden(h, w, tokens, chunk_size=3, start=start)[0]))(hidden)
    np.testing.assert_array_equal(grad[:, :start - 1], 0.0)  # hidden t-1 scores token t
    assert np.abs(np.asarray(grad[:, start - 1:-1])).min() > 0


def test_start_out_of_range_is_refused():
    hidden, w, tokens = _inputs(3)
    with pytest.raises(ValueError, match="start=0"):
        token_logprobs_from_hidden(hidden, w, tokens, start=0)
    with pytest.raises(ValueError, match="start=11"):
        token_logprobs_from_hidden(hidden, w, tokens, start=11)
    logp, ent = token_logprobs_from_hidden(hidden, w, tokens, start=tokens.shape[1])
    np.testing.assert_array_equal(logp, 0.0)


def test_bf16_hidden_gives_fp32_stats():
    hidden, w, targets = _inputs(4)
    logp, ent = token_logprobs_and_entropy(hidden.astype(jnp.bfloat16), w.astype(jnp.bfloat16),
                                           targets, chunk_size=4)
    assert logp.dtype == jnp.float32 and ent.dtype == jnp.float32
    want_logp, _ = _direct(hidden, w, targets)
    np.testing.assert_allclose(logp, want_logp, atol=0.15)


def test_no_full_logits_in_the_chunked_program():
    """The compiled chunked program never holds a [B, T, V] buffer (only [B, chunk, V])."""
    b, t, h, v, chunk = 2, 64, 8, 1000, 8
    hidden = jnp.zeros((b, t, h))
    w = jnp.zeros((v, h))
    y = jnp.zeros((b, t), jnp.int32)

    def temp_bytes(fn):
        grad = jax.jit(jax.grad(lambda h, w: jnp.sum(fn(h, w, y)[0]), argnums=(0, 1)))
        return grad.lower(hidden, w).compile().memory_analysis().temp_size_in_bytes

    chunked = temp_bytes(lambda *a: token_logprobs_and_entropy(*a, chunk_size=chunk))
    naive = temp_bytes(naive_token_logprobs_and_entropy)
    assert naive >= 4 * b * t * v
    assert chunked < 4 * 4 * b * chunk * v + 4 * v * h * 4
