"""CISPO, clipped importance-sampling-weight policy optimization (MiniMax-M1, arXiv 2506.13585).

Instead of dropping the tokens whose ratio leaves the trust region (PPO's clip), CISPO clips the
importance-sampling weight itself and stops its gradient, so every token keeps a REINFORCE-style
gradient:

    loss_t = -sg(clip(r_t, 1 - eps_low, 1 + eps_high)) * A_t * logp_t

with ``r_t = exp(L_{k(t)})`` the (clamped) unit ratio; the paper's unit is the token, its
aggregation a token mean over the batch, and it sets no lower bound (``eps_low = 1``: r >= 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def cispo_weight(unit_log_ratio: Array, eps_low, eps_high) -> Array:
    """``sg(clip(exp(L), 1 - eps_low, 1 + eps_high))``, float32 [B, T] (stop-gradient).

    Args:
      unit_log_ratio: float32 [B, T] clamped unit log-ratio L (e.g. `ratios.segment_log_ratio`).
      eps_low, eps_high: float scalars or [B, T]; ``eps_low = 1`` leaves no lower bound.
    Returns:
      float32 [B, T] weights >= 0.
    """
    r = jnp.exp(jax.lax.stop_gradient(unit_log_ratio))
    lo = 1.0 - jnp.asarray(eps_low, jnp.float32)
    hi = 1.0 + jnp.asarray(eps_high, jnp.float32)
    return jax.lax.stop_gradient(jnp.clip(r, lo, hi))


def cispo_per_token_loss(unit_log_ratio: Array, logp: Array, advantages: Array, response_mask: Array,
                         eps_low, eps_high):
    """CISPO's per-token loss ``-sg(clip(r, 1-eps_low, 1+eps_high)) * A * logp`` and weight flags.

    The gradient is ``-w_t * A_t * d logp_t`` for every valid token (none is dropped); on policy
    (w = 1) it is REINFORCE's.

    Args:
      unit_log_ratio: float32 [B, T] clamped unit log-ratio (token-level for the paper).
      logp: float [B, T] current log-probs (gradient flows; any value on padding).
      advantages: float [B, T].
      response_mask: bool or 0/1 [B, T].
      eps_low, eps_high: float scalars or [B, T] bounds of the weight.
    Returns:
      ``(loss, truncated_low, truncated_high)``: float32 [B, T] (0 on padding) and bool [B, T]
      flags of the valid tokens whose weight is truncated at ``1 - eps_low`` / ``1 + eps_high``
      (whatever the sign of A: the token still trains, with the truncated weight).
    """
    valid = response_mask.astype(bool)
    w = cispo_weight(unit_log_ratio, eps_low, eps_high)
    lp = jnp.where(valid, logp.astype(jnp.float32), 0.0)
    loss = jnp.where(valid, -w * advantages.astype(jnp.float32) * lp, 0.0)
    r = jnp.exp(jax.lax.stop_gradient(unit_log_ratio))
    high = valid & (r > 1.0 + jnp.asarray(eps_high, jnp.float32))
    low = valid & (r < 1.0 - jnp.asarray(eps_low, jnp.float32))
    return loss, low, high
