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

from sspo_jax.algorithms import aggregation, clipping, entropy_mask, kl, objectives, ratios, segments
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
        the bound for their advantage's sign while neither their unit's ratio is clipped nor the
        token guard stops them; 0 at token granularity), ``guard_frac_low/high`` and
        ``guard_frac`` (tokens the token guard stops that the unit clip did not; 0 without
        ``token_guard``), extremes (``ratio_min/max``, ``g_min/max``),
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
                entropy_stats: Optional[clipping.EntropyStats] = None, rng: Optional[Array] = None,
                entropy_threshold: Optional[Array] = None) -> LossOutput:
    """The clipped policy-gradient loss of any preset, as a (sum, denominator) pair.

    Per valid token t of unit k(t) (ALGORITHMS.md 1d):

        loss_t = -min(rho_t * A_t, clip(rho_t, 1 - eps_low * g_k, 1 + eps_high * g_k) * A_t)
                 [capped at -c * A_t for A_t < 0 with dual clip c] + kl_beta * KL_t

    where ``rho_t = exp(L_{k(t)})`` in ``cfg.ratio_form`` (`ratios.per_token_log_ratio`),
    ``L_k`` = the clamped mean token log-ratio of the unit, ``g`` = `clipping.entropy_scale`
    (1 when ``entropy_alpha == 0``), ``KL_t`` = ``cfg.kl_estimator`` between `logp` and
    `ref_logp`; then aggregated per ``cfg.loss_agg_mode`` (`aggregation.aggregate`).
    With ``cfg.entropy_scale_low`` off the lower bound uses ``min(g_k, 1)`` (`clipping.bound_scales`).
    With ``cfg.token_guard`` (dual-level clipping), a token whose own ratio ``w_t`` is past its
    own bound (``A_t > 0 and w_t > 1 + e_hi_tok`` or ``A_t < 0 and w_t < 1 - e_lo_tok``,
    `clipping.token_guard`; by default ``e_tok`` = the unit's bounds) keeps the value of its first
    term with its gradient stopped.
    ``cfg.policy_loss_kind`` other than ``ppo_clip`` replaces the first term by that method's
    (`objectives.alternative_surrogate`: GMPO, CISPO, Clip-Cov, KL-Cov); with
    ``cfg.entropy_mask_percentile`` the policy term is kept only where ``H_t >= tau``
    (`entropy_mask`); the KL term is never masked.

    Args:
      cfg: the algorithm (static; hashable frozen dataclass).
      logp: float [B, T] log-probs of the taken tokens under the current policy (gradient flows);
        padding may hold anything, even -inf.
      old_logp: float [B, T] log-probs under the behaviour policy (stop-gradient).
      advantages: float [B] (one per response) or [B, T] (per token).
      response_mask: bool or 0/1 [B, T], 1 on trained response tokens (EOS included).
      segment_ids: int [B, T] from `segments.segment_ids` (-1 on padding); used only when
        ``cfg.segmentation.granularity`` is ``subsentence``: for ``token`` and ``sequence`` the
        ids are always derived from `response_mask` (whatever is passed), so ids of another
        granularity can never silently change the algorithm.
      entropy: float [B, T] old-policy entropies; required when ``cfg.uses_entropy``.
      ref_logp: float [B, T] reference log-probs; required when ``cfg.kl_beta > 0``.
      entropy_stats: `EntropyStats` of the global batch (exact entropy normalisation under
        micro-batching); None normalises over this batch.
      rng: a `jax.random` key; required when ``cfg.uses_rng`` (Clip-Cov), ignored otherwise.
      entropy_threshold: float32 [] ``tau`` of the global batch from
        `entropy_mask.entropy_threshold` (exact under micro-batching); None computes it from
        this batch. Used only with ``cfg.entropy_mask_percentile``.
    Returns:
      `LossOutput` with float32 [] fields.
    Raises:
      ValueError: `logp`/`old_logp`/`advantages` have the wrong shape; `entropy` is missing with
        ``cfg.uses_entropy`` or `ref_logp` with ``kl_beta > 0`` or `rng` with ``cfg.uses_rng``;
        `segment_ids` is missing with ``granularity="subsentence"``.
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
    if segment_ids is None or cfg.segmentation.granularity in ("token", "sequence"):
        segment_ids = segments.units_from_mask(valid, cfg.segmentation.granularity)
    old_logp = jax.lax.stop_gradient(old_logp)

    unit_lr = ratios.segment_log_ratio(logp, old_logp, valid, segment_ids, cfg.log_ratio_clamp)

    if cfg.entropy_alpha > 0:
        if entropy is None:
            raise ValueError(f"preset {cfg.name!r} has entropy_alpha={cfg.entropy_alpha} > 0 and needs the "
                             "old policy's per-token entropy: pass entropy=[B, T] (or set entropy_alpha=0)")
        g = clipping.entropy_scale(cfg, entropy, valid, segment_ids, entropy_stats)
    else:
        g = jnp.ones((b, t), jnp.float32)
    metrics: dict[str, Array] = {}
    if cfg.policy_loss_kind == "ppo_clip":
        log_rho = ratios.per_token_log_ratio(unit_lr, logp, valid, cfg.ratio_form, cfg.log_ratio_clamp)
        g_lo, g_hi = clipping.bound_scales(cfg, g)
        sur = clipping.clipped_surrogate(log_rho, advantages, valid, cfg.eps_low * g_lo, cfg.eps_high * g_hi,
                                         cfg.dual_clip)
    else:
        g_lo = g_hi = g
        log_rho, sur, extra = objectives.alternative_surrogate(cfg, logp, old_logp, advantages, valid, segment_ids,
                                                               unit_lr, g, rng)
        metrics.update(extra)

    per_token = sur.loss
    guard_low = guard_high = jnp.zeros_like(valid)
    if cfg.token_guard:  # dual-level clipping: stop tokens that left their own trust region
        tok_lr = jnp.clip(ratios.token_log_ratio(logp, old_logp, valid), -cfg.log_ratio_clamp, cfg.log_ratio_clamp)
        guard_low, guard_high = clipping.token_guard(
            tok_lr, advantages, valid,
            cfg.eps_low * g_lo if cfg.token_guard_eps_low is None else cfg.token_guard_eps_low,
            cfg.eps_high * g_hi if cfg.token_guard_eps_high is None else cfg.token_guard_eps_high)
        already = sur.clipped_low | sur.clipped_high | sur.dual_clipped
        guard_low, guard_high = guard_low & ~already, guard_high & ~already
        per_token = jnp.where(guard_low | guard_high, jax.lax.stop_gradient(per_token), per_token)
    if cfg.entropy_mask_percentile is not None:
        if entropy is None:
            raise ValueError(f"preset {cfg.name!r} has entropy_mask_percentile={cfg.entropy_mask_percentile} and "
                             "needs the old policy's per-token entropy: pass entropy=[B, T]")
        tau = (entropy_mask.entropy_threshold(entropy, valid, cfg.entropy_mask_percentile)
               if entropy_threshold is None else jnp.asarray(entropy_threshold, jnp.float32))
        keep = entropy_mask.high_entropy_mask(entropy, valid, tau)
        per_token = jnp.where(keep, per_token, 0.0)
        metrics["entropy_mask_frac"] = _masked_mean(keep, valid)
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
    past = (((advantages > 0) & (token_rho > 1.0 + cfg.eps_high * g_hi))
            | ((advantages < 0) & (token_rho < 1.0 - cfg.eps_low * g_lo)))
    escaped = past & ~(sur.clipped_low | sur.clipped_high | guard_low | guard_high)
    metrics.update({
        "clip_frac_low": _masked_mean(sur.clipped_low, valid),
        "clip_frac_high": _masked_mean(sur.clipped_high, valid),
        "clip_frac_dual": _masked_mean(sur.dual_clipped, valid),
        "seg_clip_frac_low": _segment_fraction(sur.clipped_low, valid, segment_ids),
        "seg_clip_frac_high": _segment_fraction(sur.clipped_high, valid, segment_ids),
        "escape_frac": _masked_mean(escaped, valid),
        "guard_frac_low": _masked_mean(guard_low, valid),
        "guard_frac_high": _masked_mean(guard_high, valid),
        "guard_frac": _masked_mean(guard_low | guard_high, valid),
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
