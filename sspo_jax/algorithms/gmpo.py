"""GMPO, Geometric-Mean Policy Optimization (arXiv 2507.20673): the geometric mean of token ratios
clipped in log space, with the sign-aware clip of the paper, per unit (a response in the paper).

Per valid token, with ``Delta_t = logp_t - old_logp_t`` and the log-space range
``[-e_lo, e_hi]`` (paper: 0.4 each, i.e. ratios in ``(e^-0.4, e^0.4)``):

    c_t = sgn(A_t) * min(sgn(A_t) * Delta_t, sgn(A_t) * clip(Delta_t, -e_lo, e_hi))

that is ``min(Delta_t, e_hi)`` for A_t > 0, ``max(Delta_t, -e_lo)`` for A_t < 0 and 0 for
A_t = 0; then ``L_k = clip(mean_{t in k} c_t, -clamp, clamp)`` and the loss of token t is
``-A_t * exp(L_{k(t)})``. With ``seq-mean-token-mean`` and one unit per response this is the
paper's ``-A_i * prod_t clip(w_t)^(1/|o_i|)`` averaged over responses (verl's ``geo_mean``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sspo_jax.algorithms import ratios

Array = jax.Array


def sign_aware_clipped_log_ratio(delta: Array, advantages: Array, clip_low, clip_high) -> Array:
    """``c_t = sgn(A) * min(sgn(A) * Delta, sgn(A) * clip(Delta, -clip_low, clip_high))``.

    Written with `where`, so a clipped token's value is the bound and its gradient exactly 0.

    Args:
      delta: float32 [B, T] token log-ratios ``logp - old_logp`` (gradient flows).
      advantages: float [B, T] per-token advantages (only their sign is used).
      clip_low, clip_high: log-space bounds > 0, float scalars or [B, T] (stop-gradient).
    Returns:
      float32 [B, T]: ``min(Delta, clip_high)`` where A > 0, ``max(Delta, -clip_low)`` where
      A < 0, and 0 where A == 0.
    """
    lo = jax.lax.stop_gradient(jnp.asarray(clip_low, jnp.float32))
    hi = jax.lax.stop_gradient(jnp.asarray(clip_high, jnp.float32))
    pos, neg = advantages > 0, advantages < 0
    c = jnp.where(pos & (delta > hi), hi, delta)
    c = jnp.where(neg & (delta < -lo), -lo, c)
    return jnp.where(pos | neg, c, 0.0)


def gmpo_log_ratio(logp: Array, old_logp: Array, advantages: Array, response_mask: Array, seg_ids: Array,
                   clip_low, clip_high, form: str = "broadcast", clamp: float = 20.0):
    """The log of GMPO's ratio applied at each token, and the clip indicators.

    ``L_k = clip(mean_{t in k} c_t, -clamp, clamp)`` (`sign_aware_clipped_log_ratio`), applied per
    token in ``form`` ``broadcast`` (the paper: the gradient flows through the unit mean) or ``sg``
    (``sg[L] + c_t - sg[c_t]``, 0 gradient at the clamp; equal gradient when A is constant per unit).

    Args:
      logp, old_logp: float [B, T] log-probs of the taken tokens (any value on padding).
      advantages: float [B, T] per-token advantages.
      response_mask: bool or 0/1 [B, T].
      seg_ids: int [B, T] unit ids (-1 on padding); one per response for the paper.
      clip_low, clip_high: log-space bounds, float scalars or [B, T].
      form: ``broadcast`` or ``sg``.
      clamp: bound on |L| before ``exp``.
    Returns:
      ``(log_rho, clipped_low, clipped_high)``: float32 [B, T] (0 on padding) and bool [B, T],
      ``clipped_high = A > 0 and Delta > clip_high``, ``clipped_low = A < 0 and Delta < -clip_low``.
    Raises:
      ValueError: `form` is not ``sg`` or ``broadcast``.
    """
    valid = response_mask.astype(bool)
    adv = advantages.astype(jnp.float32)
    delta = ratios.token_log_ratio(logp, old_logp, valid)
    c = jnp.where(valid, sign_aware_clipped_log_ratio(delta, adv, clip_low, clip_high), 0.0)
    unit = jnp.clip(ratios.segment_mean(c, valid, seg_ids), -clamp, clamp)
    if form == "broadcast":
        log_rho = unit
    elif form == "sg":
        step = jnp.where(jnp.abs(jax.lax.stop_gradient(unit)) < clamp, c - jax.lax.stop_gradient(c), 0.0)
        log_rho = jax.lax.stop_gradient(unit) + step
    else:
        raise ValueError(f"ratio_form={form!r} is not one of ['sg', 'broadcast']")
    hi = jnp.asarray(clip_high, jnp.float32)
    lo = jnp.asarray(clip_low, jnp.float32)
    delta_sg = jax.lax.stop_gradient(delta)
    clipped_high = valid & (adv > 0) & (delta_sg > hi)
    clipped_low = valid & (adv < 0) & (delta_sg < -lo)
    return jnp.where(valid, log_rho, 0.0), clipped_low, clipped_high


def gmpo_per_token_loss(log_rho: Array, advantages: Array, response_mask: Array) -> Array:
    """GMPO's per-token loss ``-A_t * exp(L_{k(t)})``, float32 [B, T], 0 on padding.

    Args:
      log_rho: float32 [B, T] from `gmpo_log_ratio` (clamped, finite).
      advantages: float [B, T].
      response_mask: bool or 0/1 [B, T].
    Returns:
      float32 [B, T].
    """
    valid = response_mask.astype(bool)
    return jnp.where(valid, -advantages.astype(jnp.float32) * jnp.exp(log_rho), 0.0)
