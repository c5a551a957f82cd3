"""Clip bounds and the clipped surrogate (ALGORITHMS.md 1c, 1d, 8).

`entropy_scale` computes SSPO's per-segment scale ``g`` from the old policy's token entropies:
``Hbar_k`` = mean entropy of segment k, ``h_k = Hbar_k / mean(Hbar)`` over all valid segments of
the (global) batch, ``g_k = clip(1 + alpha * (h_k - 1), g_min, g_max)``; the bounds become
``eps_low * g`` and ``eps_high * g`` (or ``eps_low * min(g, 1)`` for the lower one when
``entropy_scale_low`` is off) [project choice]. Entropy enters with zero gradient. With
``entropy_norm="quantile"``, ``h_k - 1 = 2 q_k - 1`` where ``q_k`` is the quantile of ``Hbar_k``
in the global batch, read from a fixed-bin histogram that `EntropyStats` carries (additive, so
exact under micro-batching; an exact rank is not: it needs every segment of the global batch).

`token_guard` finds the tokens that dual-level clipping stops: those whose own ratio is past
their own bound in the direction the clip guards (issue 20).

`clipped_surrogate` is the per-token PPO loss ``-min(rho*A, clip(rho, 1-e_lo, 1+e_hi)*A)`` with
optional dual clip (the loss of a negative-advantage token is capped at ``-c*A``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from sspo_jax.algorithms.config import AlgorithmConfig
from sspo_jax.algorithms.segments import flat_segment_index

Array = jax.Array


# Histogram of segment-mean entropies for entropy_norm="quantile": ENTROPY_HIST_BINS equal bins of
# u = log1p(min(Hbar, ENTROPY_HIST_MAX)) / log1p(ENTROPY_HIST_MAX) in [0, 1] (finer at low entropy,
# where most segments are; 16 nats exceeds log(V) of any vocabulary below 8.8e6 ids).
ENTROPY_HIST_BINS = 512
ENTROPY_HIST_MAX = 16.0


def _hist_position(hbar: Array) -> Array:
    """``u * ENTROPY_HIST_BINS`` in [0, BINS]: the continuous bin coordinate of entropies (nats)."""
    h = jnp.clip(hbar.astype(jnp.float32), 0.0, ENTROPY_HIST_MAX)
    return jnp.log1p(h) / jnp.log1p(jnp.float32(ENTROPY_HIST_MAX)) * ENTROPY_HIST_BINS


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EntropyStats:
    """Sums over valid segments of the segment-mean entropy Hbar: additive across micro-batches
    and devices (``a + b``), so the normaliser of the global batch can be formed before the loss.

    Attributes:
      total: float32 [], ``sum_k Hbar_k``.
      total_sq: float32 [], ``sum_k Hbar_k^2``.
      count: float32 [], the number of valid segments.
      hist: float32 [ENTROPY_HIST_BINS], segments per bin of ``log1p(Hbar)`` (see `quantile`).
    """

    total: Array
    total_sq: Array
    count: Array
    hist: Array

    def __add__(self, other: "EntropyStats") -> "EntropyStats":
        return EntropyStats(self.total + other.total, self.total_sq + other.total_sq, self.count + other.count,
                            self.hist + other.hist)

    def quantile(self, hbar: Array) -> Array:
        """``q(Hbar)`` in [0, 1]: the fraction of the segments at or below `hbar`, each bin's
        segments spread uniformly over the bin (a continuous, non-decreasing function).

        ``q(x) = (sum_{j < b} hist_j + f * hist_b) / count`` with ``p = u(x) * BINS``, ``b =
        min(floor(p), BINS - 1)``, ``f = p - b``. A function of the global histogram only, so
        every micro-batch maps equal entropies to equal quantiles.

        Args:
          hbar: float [K] segment-mean entropies (nats); any shape works, e.g. [B, T].
        Returns:
          float32 [K] (the shape of `hbar`) quantiles (0 when there is no segment).
        """
        p = _hist_position(hbar)
        b = jnp.minimum(jnp.floor(p), ENTROPY_HIST_BINS - 1).astype(jnp.int32)
        below = jnp.cumsum(self.hist) - self.hist
        q = (below[b] + (p - b) * self.hist[b]) / jnp.maximum(self.count, 1.0)
        return jnp.clip(q, 0.0, 1.0)

    @property
    def mean(self) -> Array:
        """Mean of Hbar over segments, float32 [] (0 when there is no segment)."""
        return self.total / jnp.maximum(self.count, 1.0)

    @property
    def std(self) -> Array:
        """Population standard deviation of Hbar over segments, float32 [] (0 when there is none)."""
        return jnp.sqrt(jnp.maximum(self.total_sq / jnp.maximum(self.count, 1.0) - self.mean**2, 0.0))


def _segment_entropy(entropy: Array, response_mask: Array, seg_ids: Array):
    """Per-segment mean entropy (flat [B*T+1]), per-segment validity, and the flat index."""
    valid = response_mask.astype(bool)
    flat, n = flat_segment_index(seg_ids)
    h = jnp.where(valid, jax.lax.stop_gradient(entropy).astype(jnp.float32), 0.0)
    sums = jax.ops.segment_sum(h.ravel(), flat.ravel(), num_segments=n)
    counts = jax.ops.segment_sum(valid.astype(jnp.float32).ravel(), flat.ravel(), num_segments=n)
    seg_valid = (counts > 0) & (jnp.arange(n) < n - 1)
    return sums / jnp.maximum(counts, 1.0), seg_valid, flat


def segment_entropy_stats(entropy: Array, response_mask: Array, seg_ids: Array) -> EntropyStats:
    """`EntropyStats` of a batch; add those of all micro-batches to normalise globally.

    Args:
      entropy: float [B, T] old-policy token entropies (nats; stop-gradient; ignored on padding).
      response_mask: bool or 0/1 [B, T].
      seg_ids: int [B, T] segment ids (-1 on padding), from `segments.segment_ids`.
    Returns:
      `EntropyStats` of float32 [] sums over the batch's non-empty segments.
    """
    hbar, seg_valid, _ = _segment_entropy(entropy, response_mask, seg_ids)
    w = seg_valid.astype(jnp.float32)
    b = jnp.minimum(jnp.floor(_hist_position(hbar)), ENTROPY_HIST_BINS - 1).astype(jnp.int32)
    hist = jax.ops.segment_sum(w, b, num_segments=ENTROPY_HIST_BINS)
    return EntropyStats(jnp.sum(w * hbar), jnp.sum(w * hbar**2), jnp.sum(w), hist)


def entropy_scale(cfg: AlgorithmConfig, entropy: Array, response_mask: Array, seg_ids: Array,
                  stats: Optional[EntropyStats] = None) -> Array:
    """SSPO's clip-bound scale ``g_k = clip(1 + alpha * (h_k - 1), g_min, g_max)`` per token.

    ``Hbar_k`` is the mean entropy of segment k and, per ``cfg.entropy_norm``, ``h_k`` is
    ``Hbar_k / mean(Hbar)`` (``ratio``; h = 1 when the mean is ~0), ``1 + (Hbar_k - mean(Hbar)) /
    (std(Hbar) + 1e-6)`` (``zscore``), ``Hbar_k`` (``none``) or ``2 * q(Hbar_k)`` (``quantile``,
    `EntropyStats.quantile`: the median segment gets h = 1), with the statistics over the valid
    segments of `stats`. The bounds become `bound_scales` times the epsilons.

    Args:
      cfg: uses entropy_alpha (0 gives g = 1 everywhere), entropy_g_min, entropy_g_max,
        entropy_norm.
      entropy: float [B, T] old-policy entropy of the next-token distribution at each position
        (nats; ignored on padding).
      response_mask: bool or 0/1 [B, T].
      seg_ids: int [B, T] segment ids (-1 on padding).
      stats: global-batch `EntropyStats`; None computes them from this batch.
    Returns:
      float32 [B, T]: ``g_{k(t)}`` on valid tokens, 1 on padding; stop-gradient.
    """
    valid = response_mask.astype(bool)
    if cfg.entropy_alpha == 0.0:
        return jnp.ones(valid.shape, jnp.float32)
    hbar, _, flat = _segment_entropy(entropy, response_mask, seg_ids)
    if stats is None:
        stats = segment_entropy_stats(entropy, response_mask, seg_ids)
    if cfg.entropy_norm == "ratio":
        mean = stats.mean  # all-zero entropy (a deterministic old policy) leaves g = 1
        dev = jnp.where(mean > 1e-8, hbar / jnp.maximum(mean, 1e-8) - 1.0, 0.0)
    elif cfg.entropy_norm == "zscore":
        dev = (hbar - stats.mean) / (stats.std + 1e-6)
    elif cfg.entropy_norm == "quantile":
        dev = 2.0 * stats.quantile(hbar) - 1.0
    else:  # "none": h is the raw segment entropy
        dev = hbar - 1.0
    g = jnp.clip(1.0 + cfg.entropy_alpha * dev, cfg.entropy_g_min, cfg.entropy_g_max)
    return jax.lax.stop_gradient(jnp.where(valid, g[flat], 1.0))


def bound_scales(cfg: AlgorithmConfig, g: Array) -> tuple[Array, Array]:
    """The scales of the lower and upper clip epsilons from the entropy scale g.

    ``(g, g)`` with ``cfg.entropy_scale_low`` (both bounds follow entropy); otherwise
    ``(min(g, 1), g)``: high entropy widens only the upper bound, low entropy tightens both. The
    bounds are then ``e_lo = eps_low * g_lo`` and ``e_hi = eps_high * g_hi``.

    Args:
      cfg: uses entropy_scale_low.
      g: float32 [B, T] from `entropy_scale`.
    Returns:
      ``(g_lo, g_hi)``, float32 [B, T] each; stop-gradient.
    """
    g = jax.lax.stop_gradient(g)
    return (g if cfg.entropy_scale_low else jnp.minimum(g, 1.0)), g


def token_guard(token_log_ratio: Array, advantages: Array, response_mask: Array, eps_low,
                eps_high) -> tuple[Array, Array]:
    """The tokens that dual-level clipping stops, by their own ratio ``w_t = exp(Delta_t)``.

    ``guard_high = A_t > 0 and w_t > 1 + eps_high``; ``guard_low = A_t < 0 and w_t < 1 - eps_low``
    (the directions PPO's clip guards: a token that already moved past its bound in the direction
    its advantage pushes). The loss stops such a token's gradient.

    Args:
      token_log_ratio: float32 [B, T] clamped ``logp_t - logp_old_t``.
      advantages: float [B, T].
      response_mask: bool or 0/1 [B, T].
      eps_low, eps_high: float scalars or [B, T] guard bounds.
    Returns:
      ``(guard_low, guard_high)``, bool [B, T] each, False on padding.
    """
    valid = response_mask.astype(bool)
    adv = advantages.astype(jnp.float32)
    w = jnp.exp(jax.lax.stop_gradient(token_log_ratio).astype(jnp.float32))
    lo = 1.0 - jax.lax.stop_gradient(jnp.asarray(eps_low, jnp.float32))
    hi = 1.0 + jax.lax.stop_gradient(jnp.asarray(eps_high, jnp.float32))
    return valid & (adv < 0) & (w < lo), valid & (adv > 0) & (w > hi)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SurrogateOutput:
    """Per-token clipped-surrogate loss and clip indicators, [B, T] each, 0/False on padding.

    Attributes:
      loss: float32, the per-token loss.
      clipped_low: bool, ``A < 0 and rho < 1 - e_lo`` (the clipped branch strictly selected).
      clipped_high: bool, ``A > 0 and rho > 1 + e_hi``.
      dual_clipped: bool, ``A < 0`` and the loss is capped at ``-c * A``.
    """

    loss: Array
    clipped_low: Array
    clipped_high: Array
    dual_clipped: Array


def clipped_surrogate(log_ratio: Array, advantages: Array, response_mask: Array, eps_low,
                      eps_high, dual_clip: Optional[float] = None) -> SurrogateOutput:
    """``loss_t = -min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A)`` with ``rho = exp(log_ratio)``.

    With dual clip c, for ``A < 0`` the loss is ``min(loss_t, -c*A)``. The clipped branch is
    written with `where`, so a clipped token's gradient is exactly 0.

    Args:
      log_ratio: float32 [B, T] log of the ratio at each token (already clamped).
      advantages: float [B, T] per-token advantages.
      response_mask: bool or 0/1 [B, T].
      eps_low, eps_high: float scalars or [B, T] (entropy-scaled) bounds; stop-gradient.
      dual_clip: c > 1; None disables it.
    Returns:
      `SurrogateOutput` of [B, T] arrays, 0/False on padding.
    """
    valid = response_mask.astype(bool)
    adv = advantages.astype(jnp.float32)
    rho = jnp.exp(log_ratio)
    lo = 1.0 - jax.lax.stop_gradient(jnp.asarray(eps_low, jnp.float32))
    hi = 1.0 + jax.lax.stop_gradient(jnp.asarray(eps_high, jnp.float32))
    clipped_high = valid & (adv > 0) & (rho > hi)
    clipped_low = valid & (adv < 0) & (rho < lo)
    bound = jnp.where(clipped_high, hi, lo)
    loss = jnp.where(clipped_high | clipped_low, -bound * adv, -rho * adv)
    if dual_clip is not None:
        dual = valid & (adv < 0) & (loss > -dual_clip * adv)
        loss = jnp.where(dual, -dual_clip * adv, loss)
    else:
        dual = jnp.zeros_like(valid)
    return SurrogateOutput(jnp.where(valid, loss, 0.0), clipped_low, clipped_high, dual)
