"""Clip-Cov and KL-Cov ("The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617).

The paper shows that policy entropy falls with the covariance between a token's log-prob and its
advantage, and restrains the few tokens of largest covariance. Over the N valid tokens of the
batch (stop-gradient; the means are token means over valid tokens):

    cov_t = (A_t - mean A) * (logp_t - mean logp)

- Clip-Cov: of the tokens whose PPO clip is inactive and ``cov_low < cov_t < cov_high``, a
  uniformly random subset of ``min(max(floor(r * N), 1), #candidates)`` tokens gets loss (and so
  gradient) 0 (verl multiplies their loss by 0; the paper says it detaches their gradient).
- KL-Cov: the ``max(floor(k * N), 1)`` valid tokens of largest ``cov_t`` get
  ``coef * |logp_t - old_logp_t|`` added to the (unclipped) loss ``-A_t * r_t``.

Both select within the batch they are given (verl: within each micro-batch), so unlike the other
objectives they are not invariant to micro-batching. Randomness comes only from the `rng` key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def token_covariance(advantages: Array, logp: Array, response_mask: Array) -> Array:
    """``cov_t = (A_t - mean A) * (logp_t - mean logp)`` over the batch's valid tokens.

    Args:
      advantages: float [B, T] per-token advantages.
      logp: float [B, T] current log-probs (used stop-gradient; any value on padding).
      response_mask: bool or 0/1 [B, T].
    Returns:
      float32 [B, T], stop-gradient; 0 on padding (and everywhere when no token is valid).
    """
    valid = response_mask.astype(bool)
    n = jnp.maximum(jnp.sum(valid), 1)
    a = jnp.where(valid, advantages.astype(jnp.float32), 0.0)
    lp = jnp.where(valid, jax.lax.stop_gradient(logp).astype(jnp.float32), 0.0)
    cov = (a - jnp.sum(a) / n) * (lp - jnp.sum(lp) / n)
    return jax.lax.stop_gradient(jnp.where(valid, cov, 0.0))


def _budget(valid: Array, frac: float) -> Array:
    """``max(floor(frac * N), 1)`` as int32 [], N = number of valid tokens."""
    n = jnp.sum(valid).astype(jnp.float32)
    return jnp.maximum(jnp.floor(frac * n), 1.0).astype(jnp.int32)


def _rank(score: Array) -> Array:
    """0-based rank of each entry of [B, T] in ascending order of `score` (ties by position)."""
    flat = score.ravel()
    order = jnp.argsort(flat, stable=True)
    return jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32)).reshape(score.shape)


def clip_cov_mask(cov: Array, response_mask: Array, eligible: Array, frac: float, cov_low: float,
                  cov_high: float, rng: Array) -> Array:
    """The tokens Clip-Cov detaches: a uniform random subset of the covariance band.

    Candidates are valid, `eligible` tokens with ``cov_low < cov < cov_high``; the
    ``min(max(floor(frac * N), 1), #candidates)`` candidates with the smallest i.i.d. uniform keys
    drawn from `rng` are chosen, which is a uniformly random subset of that size.

    Args:
      cov: float32 [B, T] from `token_covariance`.
      response_mask: bool or 0/1 [B, T].
      eligible: bool [B, T], e.g. the tokens whose PPO clip is inactive.
      frac: r in (0, 1].
      cov_low, cov_high: the open band of covariances.
      rng: a `jax.random` key.
    Returns:
      bool [B, T], True on the detached tokens.
    """
    valid = response_mask.astype(bool)
    cand = valid & eligible & (cov > cov_low) & (cov < cov_high)
    keys = jax.random.uniform(rng, cov.shape)
    rank = _rank(jnp.where(cand, keys, 2.0))  # non-candidates rank after every candidate
    return cand & (rank < _budget(valid, frac))


def kl_cov_mask(cov: Array, response_mask: Array, frac: float) -> Array:
    """The ``max(floor(frac * N), 1)`` valid tokens of largest covariance (KL-Cov's top-k).

    Ties are broken by position (the first in row-major order wins); none when no token is valid.

    Args:
      cov: float32 [B, T] from `token_covariance`.
      response_mask: bool or 0/1 [B, T].
      frac: k in (0, 1].
    Returns:
      bool [B, T], True on the penalised tokens.
    """
    valid = response_mask.astype(bool)
    rank = _rank(jnp.where(valid, -cov, jnp.inf))
    return valid & (rank < _budget(valid, frac))


def kl_cov_per_token_loss(token_log_ratio: Array, advantages: Array, response_mask: Array,
                          selected: Array, coef: float) -> Array:
    """KL-Cov's per-token loss ``-A_t * r_t + [t selected] * coef * |Delta_t|``.

    ``r_t = exp(Delta_t)`` with the clamped token log-ratio ``Delta_t`` (no PPO clip, as the
    paper and verl). The penalty's gradient is ``coef * sign(Delta_t)`` (0 on policy).

    Args:
      token_log_ratio: float32 [B, T] clamped ``logp - old_logp`` (gradient flows).
      advantages: float [B, T].
      response_mask: bool or 0/1 [B, T].
      selected: bool [B, T] from `kl_cov_mask`.
      coef: the penalty weight.
    Returns:
      float32 [B, T], 0 on padding.
    """
    valid = response_mask.astype(bool)
    d = token_log_ratio
    abs_d = jnp.sign(jax.lax.stop_gradient(d)) * d
    loss = -advantages.astype(jnp.float32) * jnp.exp(d) + jnp.where(selected, coef * abs_d, 0.0)
    return jnp.where(valid, loss, 0.0)
