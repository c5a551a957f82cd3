"""Importance ratios at token, segment and sequence level (ALGORITHMS.md 1b, 2, 3).

The token log-ratio is ``Delta_t = logp_theta(y_t) - logp_old(y_t)``. A unit (a segment, a
single token, or the whole response) has the mean log-ratio ``L_k = mean_{t in k} Delta_t``;
its ratio ``exp(L_k)`` is the geometric mean of the token ratios. Means are computed with
`jax.ops.segment_sum` over a flat index of static size, and the *mean* is clamped before `exp`
(never each token, and never ``exp`` of a sum; PITFALLS.md 3).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from sspo_jax.algorithms.segments import flat_segment_index

Array = jax.Array


def token_log_ratio(logp: Array, old_logp: Array, response_mask: Array) -> Array:
    """``Delta_t = logp_t - old_logp_t`` on valid tokens, exactly 0 elsewhere.

    Args:
      logp, old_logp: float [B, T] log-probs of the taken tokens; padding positions may hold
        any value (even -inf).
      response_mask: bool or 0/1 [B, T].
    Returns:
      float32 [B, T].
    """
    valid = response_mask.astype(bool)
    return jnp.where(valid, logp.astype(jnp.float32) - old_logp.astype(jnp.float32), 0.0)


def segment_mean(values: Array, response_mask: Array, seg_ids: Array) -> Array:
    """``mean_{s in k(t)} values_s`` over each token's segment k(t), broadcast back to tokens.

    Args:
      values: float [B, T]; ignored on padding.
      response_mask: bool or 0/1 [B, T].
      seg_ids: int [B, T] row-local segment ids (-1 on padding).
    Returns:
      float32 [B, T]; 0 on padding. Gradients flow to every token of the segment.
    """
    valid = response_mask.astype(bool)
    flat, n = flat_segment_index(seg_ids)
    x = jnp.where(valid, values.astype(jnp.float32), 0.0)
    sums = jax.ops.segment_sum(x.ravel(), flat.ravel(), num_segments=n)
    counts = jax.ops.segment_sum(valid.astype(jnp.float32).ravel(), flat.ravel(), num_segments=n)
    means = sums / jnp.maximum(counts, 1.0)
    return jnp.where(valid, means[flat], 0.0)


def segment_log_ratio(logp: Array, old_logp: Array, response_mask: Array, seg_ids: Array,
                      clamp: float = 20.0) -> Array:
    """``L_{k(t)} = clip(mean_{s in k(t)} Delta_s, -clamp, clamp)`` per token.

    With token-level ids this is the clamped token log-ratio (GRPO); with one id per row it is
    GSPO's length-normalised sequence log-ratio. ``exp(L)`` is the geometric mean of the
    segment's token ratios.

    Args:
      logp, old_logp: float [B, T] log-probs of the taken tokens (any value on padding).
      response_mask: bool or 0/1 [B, T].
      seg_ids: int [B, T] row-local segment ids (-1 on padding).
      clamp: bound on |L|, applied to the mean (never to single tokens).
    Returns:
      float32 [B, T]; 0 on padding.
    """
    delta = token_log_ratio(logp, old_logp, response_mask)
    return jnp.clip(segment_mean(delta, response_mask, seg_ids), -clamp, clamp)


def sequence_log_ratio(logp: Array, old_logp: Array, response_mask: Array, clamp: float = 20.0) -> Array:
    """GSPO's ``log s_i = clip(mean_t Delta_{i,t}, -clamp, clamp)`` over each response's valid tokens.

    Args:
      logp, old_logp: float [B, T] log-probs of the taken tokens (any value on padding).
      response_mask: bool or 0/1 [B, T].
      clamp: bound on |log s_i|.
    Returns:
      float32 [B]; 0 for rows with no valid token.
    """
    valid = response_mask.astype(jnp.float32)
    delta = token_log_ratio(logp, old_logp, response_mask)
    mean = jnp.sum(delta, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1.0)
    return jnp.clip(mean, -clamp, clamp)


def per_token_log_ratio(unit_log_ratio: Array, logp: Array, response_mask: Array, form: str,
                        clamp: Optional[float] = 20.0) -> Array:
    """The log of the ratio applied at each token, from the unit log-ratio ``L_{k(t)}``.

    ``form='sg'`` (GSPO-token form): ``sg[L] + [|L| < clamp] * (logp - sg[logp])``: value L,
    gradient d logp_t for token t alone, so per-token advantages are allowed; a unit at the clamp
    passes no gradient (as verl: its clamp acts on the value the gradient flows through), instead
    of a gradient scaled by ``exp(clamp)``. ``form='broadcast'``: ``L`` itself, the gradient spread
    over the unit through the mean (0 past the clamp, where `segment_log_ratio` clips the mean).

    The forms are always equal in value. They are equal in gradient exactly when the advantage is
    constant inside each unit (the aggregation weights of every mode are constant within a
    response): then for ``|L_raw| < clamp`` both chain rules give the same sum, and for
    ``|L_raw| > clamp`` both give 0. With advantages varying inside a unit they differ.

    Args:
      unit_log_ratio: float32 [B, T] ``L_{k(t)}``, e.g. from `segment_log_ratio` (already clamped).
      logp: float [B, T] current log-probs (gradient flows; any value on padding).
      response_mask: bool or 0/1 [B, T].
      form: ``sg`` or ``broadcast``.
      clamp: the clamp `unit_log_ratio` was computed with; None never stops the sg gradient.
    Returns:
      float32 [B, T] log rho_t; on padding, `unit_log_ratio`'s value (0 from `segment_log_ratio`).
    Raises:
      ValueError: `form` is not ``sg`` or ``broadcast``.
    """
    if form == "broadcast":
        return unit_log_ratio
    if form != "sg":
        raise ValueError(f"ratio_form={form!r} is not one of ['sg', 'broadcast']")
    lp = jnp.where(response_mask.astype(bool), logp.astype(jnp.float32), 0.0)
    step = lp - jax.lax.stop_gradient(lp)
    if clamp is not None:
        step = jnp.where(jnp.abs(jax.lax.stop_gradient(unit_log_ratio)) < clamp, step, 0.0)
    return jax.lax.stop_gradient(unit_log_ratio) + step
