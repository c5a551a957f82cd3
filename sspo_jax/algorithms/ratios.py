"""Importance ratios at token, segment and sequence level (ALGORITHMS.md 1b, 2, 3).

The token log-ratio is ``Delta_t = logp_theta(y_t) - logp_old(y_t)``. A unit (a segment, a
single token, or the whole response) has the mean log-ratio ``L_k = mean_{t in k} Delta_t``;
its ratio ``exp(L_k)`` is the geometric mean of the token ratios. Means are computed with
`jax.ops.segment_sum` over a flat index of static size, and the *mean* is clamped before `exp`
(never each token, and never ``exp`` of a sum; PITFALLS.md 3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sspo_jax.algorithms.segments import flat_segment_index

Array = jax.Array


def token_log_ratio(logp: Array, old_logp: Array, response_mask: Array) -> Array:
    """``Delta = logp - old_logp`` on valid tokens, exactly 0 elsewhere (float32 [B, T]).

    Padding positions may hold any value (even -inf) in `logp` and `old_logp`.
    """
    valid = response_mask.astype(bool)
    return jnp.where(valid, logp.astype(jnp.float32) - old_logp.astype(jnp.float32), 0.0)


def segment_mean(values: Array, response_mask: Array, seg_ids: Array) -> Array:
    """Mean of `values` [B, T] over each token's segment, broadcast back to tokens.

    Returns float32 [B, T]; 0 on padding. Gradients flow to every token of the segment.
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
    """``L_{k(t)} = clip(mean_{s in k(t)} Delta_s, -clamp, clamp)`` per token (float32 [B, T]).

    With token-level ids this is the clamped token log-ratio (GRPO); with one id per row it is
    GSPO's length-normalised sequence log-ratio.
    """
    delta = token_log_ratio(logp, old_logp, response_mask)
    return jnp.clip(segment_mean(delta, response_mask, seg_ids), -clamp, clamp)


def sequence_log_ratio(logp: Array, old_logp: Array, response_mask: Array, clamp: float = 20.0) -> Array:
    """GSPO's ``log s_i = clip(mean_t Delta_{i,t})`` per response (float32 [B]; 0 for empty rows)."""
    valid = response_mask.astype(jnp.float32)
    delta = token_log_ratio(logp, old_logp, response_mask)
    mean = jnp.sum(delta, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1.0)
    return jnp.clip(mean, -clamp, clamp)


def per_token_log_ratio(unit_log_ratio: Array, logp: Array, response_mask: Array, form: str) -> Array:
    """The log of the ratio applied at each token, from the unit log-ratio ``L_{k(t)}``.

    ``form='sg'`` (GSPO-token form): ``sg[L] + logp - sg[logp]``: value L, gradient d logp_t
    for token t alone, so per-token advantages are allowed. ``form='broadcast'``: ``L`` itself,
    the gradient spread over the unit through the mean. Both equal in value; in gradient too when
    the advantage is constant inside each unit.
    """
    if form == "broadcast":
        return unit_log_ratio
    if form != "sg":
        raise ValueError(f"ratio_form={form!r} is not one of ['sg', 'broadcast']")
    lp = jnp.where(response_mask.astype(bool), logp.astype(jnp.float32), 0.0)
    return jax.lax.stop_gradient(unit_log_ratio) + lp - jax.lax.stop_gradient(lp)
