"""The per-token objectives that replace PPO's clipped surrogate, chosen by
``AlgorithmConfig.policy_loss_kind`` (``ppo_clip`` itself stays in `losses.policy_loss`).

Each returns the per-token loss in the `clipping.SurrogateOutput` shape, so aggregation, the KL
term, the high-entropy mask and the metrics of `losses.policy_loss` are shared by every preset:

- ``gmpo``: ``-A_t * exp(L_k)``, L_k the unit mean of sign-aware log-clipped token log-ratios
  (`gmpo.py`, arXiv 2507.20673).
- ``cispo``: ``-sg(clip(r_t, 1 - e_lo, 1 + e_hi)) * A_t * logp_t`` (`cispo.py`, arXiv 2506.13585).
- ``clip_cov``: PPO's clipped surrogate with a random few high-covariance tokens zeroed; ``kl_cov``:
  ``-A_t * r_t`` plus ``coef * |Delta_t|`` on the top-covariance tokens (`covariance.py`,
  arXiv 2505.22617).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from sspo_jax.algorithms import cispo, clipping, covariance, gmpo, ratios
from sspo_jax.algorithms.config import AlgorithmConfig

Array = jax.Array


def alternative_surrogate(cfg: AlgorithmConfig, logp: Array, old_logp: Array, advantages: Array,
                          response_mask: Array, seg_ids: Array, unit_log_ratio: Array, g: Array,
                          rng: Optional[Array] = None):
    """The per-token loss of ``cfg.policy_loss_kind`` (not ``ppo_clip``), with clip flags.

    Args:
      cfg: uses policy_loss_kind, eps_low, eps_high (scaled by `g`), dual_clip (Clip-Cov),
        ratio_form and log_ratio_clamp (GMPO), cov_clip_frac, cov_clip_low, cov_clip_high,
        kl_cov_frac, kl_cov_coef.
      logp: float [B, T] current log-probs (gradient flows; any value on padding).
      old_logp: float [B, T] behaviour log-probs (stop-gradient).
      advantages: float [B, T] per-token advantages.
      response_mask: bool [B, T].
      seg_ids: int [B, T] unit ids (-1 on padding).
      unit_log_ratio: float32 [B, T] clamped unit mean log-ratio (`ratios.segment_log_ratio`).
      g: float32 [B, T] entropy scale of the bounds (1 without entropy scaling).
      rng: a `jax.random` key; required by ``clip_cov``.
    Returns:
      ``(log_rho, surrogate, metrics)``: float32 [B, T] log of the ratio each token uses (for the
      ratio metrics), a `clipping.SurrogateOutput` of [B, T] arrays, and a dict of float32 []
      extra metrics (``cov_selected_frac`` for the covariance methods).
    Raises:
      ValueError: an unknown kind, or ``clip_cov`` without `rng`.
    """
    kind = cfg.policy_loss_kind
    valid = response_mask.astype(bool)
    adv = advantages.astype(jnp.float32)
    e_lo, e_hi = cfg.eps_low * g, cfg.eps_high * g
    none = jnp.zeros(valid.shape, bool)
    n = jnp.maximum(jnp.sum(valid), 1)
    if kind == "gmpo":
        log_rho, low, high = gmpo.gmpo_log_ratio(logp, old_logp, adv, valid, seg_ids, e_lo, e_hi,
                                                 cfg.ratio_form, cfg.log_ratio_clamp)
        return log_rho, clipping.SurrogateOutput(gmpo.gmpo_per_token_loss(log_rho, adv, valid), low, high, none), {}
    if kind == "cispo":
        loss, low, high = cispo.cispo_per_token_loss(unit_log_ratio, logp, adv, valid, e_lo, e_hi)
        return unit_log_ratio, clipping.SurrogateOutput(loss, low, high, none), {}
    if kind not in ("clip_cov", "kl_cov"):
        raise ValueError(f"policy_loss_kind={kind!r} has no alternative surrogate")
    # Token-level (validated): unit_log_ratio is the clamped token log-ratio.
    log_rho = ratios.per_token_log_ratio(unit_log_ratio, logp, valid, "sg", cfg.log_ratio_clamp)
    cov = covariance.token_covariance(adv, logp, valid)
    if kind == "clip_cov":
        if rng is None:
            raise ValueError(f"preset {cfg.name!r} has policy_loss_kind='clip_cov', which draws its tokens at random: "
                             "pass rng=jax.random.key(...) (a fresh key per step and micro-batch)")
        sur = clipping.clipped_surrogate(log_rho, adv, valid, e_lo, e_hi, cfg.dual_clip)
        detached = covariance.clip_cov_mask(cov, valid, ~(sur.clipped_low | sur.clipped_high), cfg.cov_clip_frac,
                                            cfg.cov_clip_low, cfg.cov_clip_high, rng)
        sur = dataclasses.replace(sur, loss=jnp.where(detached, 0.0, sur.loss))
        return log_rho, sur, {"cov_selected_frac": jnp.sum(detached) / n}
    selected = covariance.kl_cov_mask(cov, valid, cfg.kl_cov_frac)
    loss = covariance.kl_cov_per_token_loss(log_rho, adv, valid, selected, cfg.kl_cov_coef)
    return log_rho, clipping.SurrogateOutput(loss, none, none, none), {"cov_selected_frac": jnp.sum(selected) / n}
