"""The high-entropy token mask of "Beyond the 80/20 Rule" (arXiv 2506.01939).

Only the forking tokens train: the policy-gradient term of a token is kept iff its old-policy
entropy is at or above the ``p``-th percentile (p = 80: the top 20%) of the entropies of the
valid tokens of the global batch, ``1[H_t >= tau_p]``. The threshold is linear-interpolated
(as `numpy.percentile`, `torch.quantile` and TRL's ``top_entropy_quantile``); compute it once
per rollout batch with `entropy_threshold` and pass it to every micro-batch for exactness.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def entropy_threshold(entropy: Array, response_mask: Array, percentile: float) -> Array:
    """``tau_p``: the `percentile`-th percentile of the valid tokens' entropies (linear).

    Args:
      entropy: float [B, T] old-policy token entropies (nats; stop-gradient; any value on padding).
      response_mask: bool or 0/1 [B, T].
      percentile: p in [0, 100).
    Returns:
      float32 []: the threshold; +inf when no token is valid (then no token is kept).
    """
    valid = response_mask.astype(bool)
    h = jnp.where(valid, jax.lax.stop_gradient(entropy).astype(jnp.float32), jnp.nan)
    tau = jnp.nanpercentile(h.ravel(), percentile)
    return jnp.where(jnp.any(valid), tau, jnp.inf).astype(jnp.float32)


def high_entropy_mask(entropy: Array, response_mask: Array, threshold: Array) -> Array:
    """``valid_t and H_t >= threshold``, bool [B, T].

    Args:
      entropy: float [B, T] old-policy token entropies.
      response_mask: bool or 0/1 [B, T].
      threshold: float32 [] from `entropy_threshold` (of the global batch).
    Returns:
      bool [B, T].
    """
    valid = response_mask.astype(bool)
    return valid & (jax.lax.stop_gradient(entropy).astype(jnp.float32) >= threshold)
