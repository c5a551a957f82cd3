"""Named presets: each algorithm is an `AlgorithmConfig` over the same pure functions.

=========== ============================== =====================================================
preset      paper                          what it sets
=========== ============================== =====================================================
grpo        DeepSeekMath, arXiv 2402.03300 token ratio, eps 0.2, k3 KL beta 0.04, seq-mean-token-mean
dapo        arXiv 2503.14476               token ratio, eps 0.2/0.28, token-mean, dynamic sampling,
                                           soft overlong penalty, no KL
dr_grpo     arXiv 2503.20783               token ratio, A = R - mean, token sum / constant
gspo        arXiv 2507.18071               sequence ratio (broadcast form), eps 3e-4/4e-4, 4 minibatches
gspo_token  arXiv 2507.18071               as gspo in the stop-gradient per-token form
sspo        arXiv 2511.04256               subsentence ratio (sg form), eps 0.2/0.28, entropy-scaled bounds
ppo         arXiv 1707.06347               token ratio, dual clip 3, token critic with GAE, G = 1
sppo        arXiv 2604.08865               token ratio, dual clip 3, prompt critic, A = R - V(x), G = 1
gmpo        arXiv 2507.20673               geometric mean per response of token ratios clipped in log
                                           space to (-0.4, 0.4) by the sign of A, seq-mean-token-mean
cispo       MiniMax-M1, arXiv 2506.13585   -sg(clip(w, 0, 1 + 5)) * A * logp per token (no token
                                           dropped; eps_high 5 [project choice]), token-mean, no KL
clip_cov    arXiv 2505.22617               token clip 0.2, loss 0 on a random 2e-4 of tokens with
                                           covariance in (1, 5) (needs rng), token-mean
kl_cov      arXiv 2505.22617               -A * r plus |logp - old_logp| on the top 2e-3 tokens by
                                           covariance (no clip), token-mean
top_entropy arXiv 2506.01939               DAPO with the policy gradient only on tokens at or above
                                           the 80th entropy percentile of the batch
=========== ============================== =====================================================

``get(name, **overrides)`` returns the preset with validated overrides.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sspo_jax.algorithms.config import AlgorithmConfig, ConfigError, SegmentationConfig

_TOKEN = SegmentationConfig(granularity="token")
_SEQUENCE = SegmentationConfig(granularity="sequence")

PRESETS: dict[str, AlgorithmConfig] = {
    "grpo": AlgorithmConfig(
        name="grpo", eps_low=0.2, eps_high=0.2, segmentation=_TOKEN, kl_beta=0.04, kl_estimator="k3",
        loss_agg_mode="seq-mean-token-mean", advantage="group_zscore", group_size=8),
    "dapo": AlgorithmConfig(
        name="dapo", eps_low=0.2, eps_high=0.28, segmentation=_TOKEN, loss_agg_mode="token-mean",
        advantage="group_zscore", group_size=8, dynamic_sampling=True, max_sampling_rounds=3,
        overlong_buffer_frac=0.2, overlong_penalty_factor=1.0),
    "dr_grpo": AlgorithmConfig(
        name="dr_grpo", eps_low=0.2, eps_high=0.2, segmentation=_TOKEN,
        loss_agg_mode="seq-mean-token-sum-norm", advantage="group_mean", group_size=8),
    "gspo": AlgorithmConfig(
        name="gspo", eps_low=3e-4, eps_high=4e-4, segmentation=_SEQUENCE, ratio_form="broadcast",
        loss_agg_mode="seq-mean-token-mean", advantage="group_zscore", group_size=8, num_minibatches=4),
    "gspo_token": AlgorithmConfig(
        name="gspo_token", eps_low=3e-4, eps_high=4e-4, segmentation=_SEQUENCE, ratio_form="sg",
        loss_agg_mode="seq-mean-token-mean", advantage="group_zscore", group_size=8, num_minibatches=4),
    "sspo": AlgorithmConfig(
        name="sspo", eps_low=0.2, eps_high=0.28, segmentation=SegmentationConfig(), ratio_form="sg",
        entropy_alpha=1.0, entropy_g_min=0.5, entropy_g_max=2.0, entropy_norm="ratio",
        loss_agg_mode="token-mean", advantage="group_zscore", group_size=8),
    "ppo": AlgorithmConfig(
        name="ppo", eps_low=0.2, eps_high=0.2, dual_clip=3.0, segmentation=_TOKEN, loss_agg_mode="token-mean",
        advantage="gae", critic="token", gae_gamma=1.0, gae_lambda=1.0, value_clip=0.5, group_size=1),
    "sppo": AlgorithmConfig(
        name="sppo", eps_low=0.2, eps_high=0.2, dual_clip=3.0, segmentation=_TOKEN, loss_agg_mode="token-mean",
        advantage="sequence_baseline", critic="prompt", group_size=1),
    # GMPO: eps_low/eps_high are log-space bounds here (ratios in (e^-0.4, e^0.4)); one geometric
    # mean per response (the paper), gradient through it (broadcast).
    "gmpo": AlgorithmConfig(
        name="gmpo", policy_loss_kind="gmpo", eps_low=0.4, eps_high=0.4, segmentation=_SEQUENCE,
        ratio_form="broadcast", loss_agg_mode="seq-mean-token-mean", advantage="group_zscore", group_size=8),
    # CISPO: no lower bound on the weight (the paper); the paper tunes only eps_high and does not
    # publish it: 5.0 as TRL/ScaleRL recommend [project choice].
    "cispo": AlgorithmConfig(
        name="cispo", policy_loss_kind="cispo", eps_low=1.0, eps_high=5.0, segmentation=_TOKEN,
        loss_agg_mode="token-mean", advantage="group_zscore", group_size=8),
    # Clip-Cov / KL-Cov: the paper's r = 2e-4, band (1, 5); k = 2e-3 (Qwen2.5-7B), coef 1; the token
    # clip of verl's default actor (0.2; the paper's scripts widen it for Clip-Cov).
    "clip_cov": AlgorithmConfig(
        name="clip_cov", policy_loss_kind="clip_cov", eps_low=0.2, eps_high=0.2, segmentation=_TOKEN,
        cov_clip_frac=2e-4, cov_clip_low=1.0, cov_clip_high=5.0, loss_agg_mode="token-mean",
        advantage="group_zscore", group_size=8),
    "kl_cov": AlgorithmConfig(
        name="kl_cov", policy_loss_kind="kl_cov", segmentation=_TOKEN, kl_cov_frac=2e-3, kl_cov_coef=1.0,
        loss_agg_mode="token-mean", advantage="group_zscore", group_size=8),
    # 80/20: the paper trains DAPO (clip-higher, token-mean, dynamic sampling, overlong shaping, no KL).
    "top_entropy": AlgorithmConfig(
        name="top_entropy", eps_low=0.2, eps_high=0.28, segmentation=_TOKEN, loss_agg_mode="token-mean",
        entropy_mask_percentile=80.0, advantage="group_zscore", group_size=8, dynamic_sampling=True,
        max_sampling_rounds=3, overlong_buffer_frac=0.2, overlong_penalty_factor=1.0),
}

_FIELDS = {f.name for f in dataclasses.fields(AlgorithmConfig)}
_SEG_FIELDS = {f.name for f in dataclasses.fields(SegmentationConfig)}


def names() -> list[str]:
    """The registered preset names."""
    return sorted(PRESETS)


def get(name: str, **overrides: Any) -> AlgorithmConfig:
    """The preset `name` with `overrides` applied and validated.

    ``segmentation`` may be overridden with a `SegmentationConfig` or a dict of its fields
    (merged into the preset's).

    Raises:
      ConfigError: an unknown preset, an unknown field or an invalid value.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown algorithm preset {name!r}; known presets: {names()}")
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise ConfigError(f"unknown algorithm field(s) {unknown} for preset {name!r}; known fields: {sorted(_FIELDS)}")
    seg = overrides.get("segmentation")
    if isinstance(seg, dict):
        bad = sorted(set(seg) - _SEG_FIELDS)
        if bad:
            raise ConfigError(f"unknown segmentation field(s) {bad}; known fields: {sorted(_SEG_FIELDS)}")
    return PRESETS[name].replace(**overrides)


def register(cfg: AlgorithmConfig) -> AlgorithmConfig:
    """Adds a user preset under ``cfg.name`` and returns `cfg`.

    Raises:
      ConfigError: a preset of that name exists already.
    """
    if cfg.name in PRESETS:
        raise ConfigError(f"preset {cfg.name!r} already exists; choose another name")
    PRESETS[cfg.name] = cfg
    return cfg
