"""Policy and value losses behind one signature each, returning (sum, denominator) pairs.

`policy_loss` is the single policy loss of every preset: the preset's config decides the unit of
the importance ratio (token: GRPO/DAPO/Dr. GRPO/PPO/SPPO; subsentence: SSPO; sequence: GSPO),
the ratio form, the clip bounds (asymmetric, entropy-scaled, dual clip), the KL term and the
aggregation. Per token (ALGORITHMS.md 1d):

    loss_t = -min(rho_t * A_t, clip(rho_t, 1 - e_lo_k, 1 + e_hi_k) * A_t) + beta * KL_t

with ``rho_t = exp(L_{k(t)})`` (see `ratios.per_token_log_ratio`), then aggregated per
`cfg.loss_agg_mode`. `value_loss` dispatches on the critic kind: PPO's clipped MSE per token or
SPPO's binary cross-entropy on the prompt logit.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from sspo_jax.algorithms import aggregation, clipping, kl, ratios, segments
from sspo_jax.algorithms.config import AlgorithmConfig

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossOutput:
    """A loss as ``loss_sum / denominator`` plus diagnostics.

    Sum `loss_sum` and `denominator` over micro-batches or devices before dividing; `loss` is the
    mean of this batch alone (0 when it has no valid token).

    Attributes:
      loss_sum: float32 [], the aggregated loss numerator (differentiable).
      denominator: float32 [], depends on the mask only (see `aggregation.aggregate`).
      metrics: name -> float32 [] of this batch, stop-gradient: token means (``clip_frac_low``,
        ``clip_frac_high``, ``clip_frac_dual``, ``ratio_mean``, ``approx_kl`` (k3 to the old
        policy), ``g_mean``, ``kl`` with KL, ``entropy`` when entropy is given), fractions of
        segments (``seg_clip_frac_low/high``), ``escape_frac`` (tokens whose own ratio is past
        the bound for their advantage's sign while their unit's ratio is not clipped; 0 at token
        granularity), extremes (``ratio_min/max``, ``g_min/max``),
        segment statistics (``segments_per_response``, ``mean_segment_length``) and the
        configured (unscaled) ``eps_low``, ``eps_high``.
      num_tokens: float32 [], valid tokens of this batch: the weight for merging `metrics`
        across batches (``*_min``/``*_max`` merge by extremes).
    """

    loss_sum: Array
    denominator: Array
    metrics: dict
    num_tokens: Array

    @property
    def loss(self) -> Array:
        """``loss_sum / max(denominator, 1)``, float32 []."""
        return aggregation.safe_divide(self.loss_sum, self.denominator)


def _masked_mean(x: Array, valid: Array) -> Array:
    return jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def _masked_min(x: Array, valid: Array, empty: float) -> Array:
    return jnp.where(jnp.any(valid), jnp.min(jnp.where(valid, x, jnp.inf)), empty)


def _masked_max(x: Array, valid: Array, empty: float) -> Array:
    return jnp.where(jnp.any(valid), jnp.max(jnp.where(valid, x, -jnp.inf)), empty)


def _segment_fraction(flag: Array, valid: Array, seg_ids: Array) -> Array:
    """Fraction of valid segments in which `flag` holds for at least one token."""
    flat, n = segments.flat_segment_index(seg_ids)
    hits = jax.ops.segment_sum((flag & valid).astype(jnp.float32).ravel(), flat.ravel(), num_segments=n)
    sizes = jax.ops.segment_sum(valid.astype(jnp.float32).ravel(), flat.ravel(), num_segments=n)
    exists = (sizes > 0) & (jnp.arange(n) < n - 1)
    return jnp.sum(exists & (hits > 0)) / jnp.maximum(jnp.sum(exists), 1)


def policy_loss(cfg: AlgorithmConfig, logp: Array, old_logp: Array, advantages: Array,
                response_mask: Array, *, segment_ids: Optional[Array] = None,
                entropy: Optional[Array] = None, ref_logp: Optional[Array] = None,
                entropy_stats: Optional[clipping.EntropyStats] = None) -> LossOutput:
    """The clipped policy-gradient loss of any preset, as a (sum, denominator) pair.

    Per valid token t of unit k(t) (ALGORITHMS.md 1d):

        loss_t = -min(rho_t * A_t, clip(rho_t, 1 - eps_low * g_k, 1 + eps_high * g_k) * A_t)
                 [capped at -c * A_t for A_t < 0 with dual clip c] + kl_beta * KL_t

    where ``rho_t = exp(L_{k(t)})`` in ``cfg.ratio_form`` (`ratios.per_token_log_ratio`),
    ``L_k`` = the clamped mean token log-ratio of the unit, ``g`` = `clipping.entropy_scale`
    (1 when ``entropy_alpha == 0``), ``KL_t`` = ``cfg.kl_estimator`` between `logp` and
    `ref_logp`; then aggregated per ``cfg.loss_agg_mode`` (`aggregation.aggregate`).

    Args:
      cfg: the algorithm (static; hashable frozen dataclass).
      logp: float [B, T] log-probs of the taken tokens under the current policy (gradient flows);
        padding may hold anything, even -inf.
      old_logp: float [B, T] log-probs under the behaviour policy (stop-gradient).
      advantages: float [B] (one per response) or [B, T] (per token).
      response_mask: bool or 0/1 [B, T], 1 on trained response tokens (EOS included).
      segment_ids: int [B, T] from `segments.segment_ids` (-1 on padding); may be omitted when
        ``cfg.segmentation.granularity`` is ``token`` or ``sequence``.
      entropy: float [B, T] old-policy entropies; required when ``cfg.entropy_alpha > 0``.
      ref_logp: float [B, T] reference log-probs; required when ``cfg.kl_beta > 0``.
      entropy_stats: `EntropyStats` of the global batch (exact entropy normalisation under
        micro-batching); None normalises over this batch.
    Returns:
      `LossOutput` with float32 [] fields.
    Raises:
      ValueError: `logp`/`old_logp`/`advantages` have the wrong shape; `entropy` is missing with
        ``entropy_alpha > 0`` or `ref_logp` with ``kl_beta > 0``; `segment_ids` is missing with
        ``granularity="subsentence"``.
    """
    valid = response_mask.astype(bool)
    b, t = valid.shape
    for name, arr in (("logp", logp), ("old_logp", old_logp)):
        if arr.shape != (b, t):
            raise ValueError(f"{name} has shape {arr.shape}, expected {(b, t)} like response_mask")
    if advantages.ndim == 1:
        if advantages.shape[0] != b:
            raise ValueError(f"advantages has shape {advantages.shape}, expected ({b},) or {(b, t)}")
        advantages = jnp.broadcast_to(advantages[:, None], (b, t))
    elif advantages.shape != (b, t):
        raise ValueError(f"advantages has shape {advantages.shape}, expected ({b},) or {(b, t)}")
    if segment_ids is None:
        segment_ids = segments.units_from_mask(valid, cfg.segmentation.granularity)
    old_logp = jax.lax.stop_gradient(old_logp)

    unit_lr = ratios.segment_log_ratio(logp, old_logp, valid, segment_ids, cfg.log_ratio_clamp)
    log_rho = ratios.per_token_log_ratio(unit_lr, logp, valid, cfg.ratio_form)

    if cfg.entropy_alpha > 0:
        if entropy is None:
            raise ValueError(f"preset {cfg.name!r} has entropy_alpha={cfg.entropy_alpha} > 0 and needs the "
                             "old policy's per-token entropy: pass entropy=[B, T] (or set entropy_alpha=0)")
        g = clipping.entropy_scale(cfg, entropy, valid, segment_ids, entropy_stats)
    else:
        g = jnp.ones((b, t), jnp.float32)
    sur = clipping.clipped_surrogate(log_rho, advantages, valid, cfg.eps_low * g, cfg.eps_high * g, cfg.dual_clip)

    per_token = sur.loss
    metrics: dict[str, Array] = {}
    if cfg.kl_beta > 0:
        if ref_logp is None:
            raise ValueError(f"preset {cfg.name!r} has kl_beta={cfg.kl_beta} > 0 and needs ref_logp=[B, T] "
                             "(reference-policy log-probs), or set kl_beta=0")
        lp = jnp.where(valid, logp, 0.0)
        ref = jnp.where(valid, ref_logp, 0.0)
        kl_t = kl.kl_penalty(lp, ref, cfg.kl_estimator, cfg.kl_clamp)
        per_token = per_token + cfg.kl_beta * kl_t
        metrics["kl"] = _masked_mean(jax.lax.stop_gradient(kl_t), valid)

    loss_sum, denominator = aggregation.aggregate(per_token, valid, cfg.loss_agg_mode, cfg.loss_norm_constant)

    sg = jax.lax.stop_gradient
    rho = jnp.exp(sg(log_rho))
    lp_sg = jnp.where(valid, sg(logp), 0.0)
    # Tokens whose own ratio is past the bound the clip enforces for their advantage's sign while
    # their unit's ratio is not clipped: what a segment or sequence mean lets through.
    token_rho = jnp.exp(jnp.clip(lp_sg - jnp.where(valid, old_logp, 0.0), -cfg.log_ratio_clamp, cfg.log_ratio_clamp))
    past = (((advantages > 0) & (token_rho > 1.0 + cfg.eps_high * g))
            | ((advantages < 0) & (token_rho < 1.0 - cfg.eps_low * g)))
    escaped = past & ~(sur.clipped_low | sur.clipped_high)
    metrics.update({
        "clip_frac_low": _masked_mean(sur.clipped_low, valid),
        "clip_frac_high": _masked_mean(sur.clipped_high, valid),
        "clip_frac_dual": _masked_mean(sur.dual_clipped, valid),
        "seg_clip_frac_low": _segment_fraction(sur.clipped_low, valid, segment_ids),
        "seg_clip_frac_high": _segment_fraction(sur.clipped_high, valid, segment_ids),
        "escape_frac": _masked_mean(escaped, valid),
        "ratio_mean": _masked_mean(rho, valid),
        "ratio_min": _masked_min(rho, valid, 1.0),
        "ratio_max": _masked_max(rho, valid, 1.0),
        "approx_kl": _masked_mean(kl.kl_penalty(lp_sg, jnp.where(valid, old_logp, 0.0), "k3"), valid),
        "g_mean": _masked_mean(g, valid),
        "g_min": _masked_min(g, valid, 1.0),
        "g_max": _masked_max(g, valid, 1.0),
        "eps_low": jnp.float32(cfg.eps_low),
        "eps_high": jnp.float32(cfg.eps_high),
        **segments.segment_stats(segment_ids, valid),
    })
    if entropy is not None:
        metrics["entropy"] = _masked_mean(sg(entropy).astype(jnp.float32), valid)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    return LossOutput(loss_sum, denominator, metrics, jnp.sum(valid).astype(jnp.float32))


def clipped_value_loss(values: Array, old_values: Array, returns: Array, response_mask: Array,
                       clip: float = 0.5) -> tuple[Array, Array]:
    """PPO value loss ``0.5 * max((V - G)^2, (clip(V, V_old - c, V_old + c) - G)^2)``, token-mean.

    Args:
      values: float [B, T] current values V (gradient flows).
      old_values: float [B, T] values V_old at rollout time (stop-gradient).
      returns: float [B, T] targets G (stop-gradient).
      response_mask: bool or 0/1 [B, T]; other positions are ignored.
      clip: c, the value clip range.
    Returns:
      (loss_sum, denominator = number of valid tokens), float32 [] each.
    """
    v = values.astype(jnp.float32)
    v_old = jax.lax.stop_gradient(old_values).astype(jnp.float32)
    ret = jax.lax.stop_gradient(returns).astype(jnp.float32)
    v_clipped = v_old + jnp.clip(v - v_old, -clip, clip)
    per_token = 0.5 * jnp.maximum((v - ret) ** 2, (v_clipped - ret) ** 2)
    return aggregation.aggregate(per_token, response_mask, "token-mean")


def bce_critic_loss(logit: Array, rewards: Array, valid: Optional[Array] = None) -> tuple[Array, Array]:
    """SPPO critic loss: binary cross-entropy between ``sigmoid(z(x))`` and R in [0, 1].

    ``BCE(z, R) = -R log sigmoid(z) - (1 - R) log(1 - sigmoid(z)) = softplus(z) - R * z``
    (stable for any z), so ``dBCE/dz = sigmoid(z) - R = -A``.

    Args:
      logit: float [B] critic logits z(x) (gradient flows).
      rewards: float [B] targets R in [0, 1] (stop-gradient).
      valid: optional bool [B]; invalid rows are ignored. None: every row counts.
    Returns:
      (loss_sum, denominator = number of valid rows), float32 [] each.
    """
    z = logit.astype(jnp.float32)
    r = jax.lax.stop_gradient(rewards).astype(jnp.float32)
    per = jax.nn.softplus(z) - r * z
    w = jnp.ones_like(z, dtype=bool) if valid is None else valid.astype(bool)
    return jnp.sum(jnp.where(w, per, 0.0)), jnp.sum(w).astype(jnp.float32)
