"""The blockwise inverse-CDF sampler: exact distribution and log-probs over several blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sspo_jax.rollout.sampling import sample_from_logits


@pytest.mark.parametrize("vocab", [1, 7, 100, 1000])  # 1000: 32 blocks of 32, the last 24 slots padding
def test_blockwise_sampler_matches_softmax(vocab):
    rng = np.random.default_rng(vocab)
    x = (rng.normal(size=(3, vocab)) * 2).astype(np.float32)
    if vocab > 2:
        x[0, ::3] = -np.inf  # excluded tokens (top-k / top-p) are never drawn
    x[2, :] = -np.inf
    x[2, vocab - 1] = 1.0  # all the mass on the very last token, behind any padding
    n = 20_000
    draw = jax.jit(jax.vmap(sample_from_logits, in_axes=(None, 0)))
    toks, lps = (np.asarray(a) for a in draw(jnp.asarray(x), jax.random.split(jax.random.key(vocab), n)))
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    for r in range(3):
        assert np.all(p[r, toks[:, r]] > 0), "a token of probability 0 was drawn"
        np.testing.assert_allclose(lps[:, r], np.log(p[r, toks[:, r]]), rtol=1e-5, atol=1e-6)
        freq = np.bincount(toks[:, r], minlength=vocab) / n
        big = p[r] * n >= 20  # 5 standard errors per frequent token; the rare ones pooled
        se = np.sqrt(p[r] * (1 - p[r]) / n)
        assert np.all(np.abs(freq - p[r])[big] <= 5 * se[big])
        rare_p, rare_f = p[r][~big].sum(), freq[~big].sum()
        assert abs(rare_f - rare_p) <= 5 * np.sqrt(rare_p * (1 - rare_p) / n) + 1e-9
    assert np.all(toks[:, 2] == vocab - 1)


def test_blockwise_sampler_same_key_same_tokens():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 300)), jnp.float32)
    a = sample_from_logits(x, jax.random.key(7))
    b = sample_from_logits(x, jax.random.key(7))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].dtype == jnp.int32 and a[1].dtype == jnp.float32 and a[0].shape == a[1].shape == (4,)
