"""Named presets: each algorithm is an `AlgorithmConfig` over the same pure functions.

`PRESETS` holds the configs and `PAPERS` the paper of each and what it sets (the table that
docs/configuration.md renders). Settings that are not the algorithm's (the sampling temperature,
the batch size) live in the train config: `PAPERS` names the paper's values of those too.

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
        overlong_buffer_frac=0.2, overlong_penalty_factor=1.0, num_minibatches=16),
    "dr_grpo": AlgorithmConfig(
        name="dr_grpo", eps_low=0.2, eps_high=0.2, segmentation=_TOKEN,
        loss_agg_mode="seq-mean-token-sum-norm", advantage="group_mean", group_size=8),
    "gspo": AlgorithmConfig(
        name="gspo", eps_low=3e-4, eps_high=4e-4, segmentation=_SEQUENCE, ratio_form="broadcast",
        loss_agg_mode="seq-mean-token-mean", advantage="group_zscore", group_size=8, num_minibatches=4),
    "gspo_token": AlgorithmConfig(
        name="gspo_token", eps_low=3e-4, eps_high=4e-4, segmentation=_SEQUENCE, ratio_form="sg",
        loss_agg_mode="seq-mean-token-mean", advantage="group_zscore", group_size=8, num_minibatches=4),
    # The token guard, upper-bound-only widening and quantile normalisation were chosen by the
    # pre-registered comparison configs/compare/sspo_defaults.yaml (docs/results/sspo_defaults).
    "sspo": AlgorithmConfig(
        name="sspo", eps_low=0.2, eps_high=0.28, segmentation=SegmentationConfig(), ratio_form="sg",
        entropy_alpha=1.0, entropy_g_min=0.5, entropy_g_max=2.0, entropy_norm="quantile",
        entropy_scale_low=False, token_guard=True,
        loss_agg_mode="token-mean", advantage="group_zscore", group_size=8),
    "ppo": AlgorithmConfig(
        name="ppo", eps_low=0.2, eps_high=0.2, dual_clip=3.0, segmentation=_TOKEN, loss_agg_mode="token-mean",
        advantage="gae", critic="token", gae_gamma=1.0, gae_lambda=1.0, value_clip=0.5, group_size=1),
    "sppo": AlgorithmConfig(
        name="sppo", eps_low=0.2, eps_high=0.2, dual_clip=3.0, segmentation=_TOKEN, loss_agg_mode="token-mean",
        advantage="sequence_baseline", critic="prompt", group_size=1, num_minibatches=2),
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

# The paper of each preset and what the preset sets: (paper, summary). Rendered in
# docs/configuration.md; a test checks that every preset has an entry.
PAPERS: dict[str, tuple[str, str]] = {
    "grpo": ("DeepSeekMath, arXiv 2402.03300",
             "token ratio, eps 0.2, k3 KL in the loss with beta 0.04 to the initial policy, seq-mean-token-mean"),
    "dapo": ("DAPO, arXiv 2503.14476",
             "token ratio, eps 0.2/0.28 (clip-higher), token-mean, no KL; dynamic sampling on correctness "
             "(`dynamic_sampling_metric`), soft overlong penalty with L_cache = 0.2 L_max scaled to the 0/1 "
             "reward range (`overlong_reward_span`); 16 minibatch updates per rollout (the paper's 512 "
             "prompts x 16 responses in minibatches of 512 responses)"),
    "dr_grpo": ("Dr. GRPO, arXiv 2503.20783",
                "token ratio, A = R - mean (no std), each response's token sum / the maximum generation length"),
    "gspo": ("GSPO, arXiv 2507.18071",
             "sequence ratio (broadcast form), eps 3e-4/4e-4, 4 minibatches per rollout"),
    "gspo_token": ("GSPO, arXiv 2507.18071", "as gspo in the stop-gradient per-token form (GSPO-token)"),
    "sspo": ("SSPO, arXiv 2511.04256",
             "subsentence ratio (sg form), eps 0.2/0.28, entropy-scaled bounds (alpha 1, g in [0.5, 2] from "
             "the segment's entropy quantile, widening the upper bound only), the token guard, token-mean "
             "[project choices where the paper is silent; chosen by configs/compare/sspo_defaults.yaml]"),
    "ppo": ("PPO, arXiv 1707.06347",
            "token ratio, eps 0.2, dual clip 3, token critic with GAE (gamma = lambda = 1), clipped value "
            "loss, G = 1; options: the KL in the reward (`kl_in_reward_beta`), critic warm-up "
            "(`critic_warmup_steps`)"),
    "sppo": ("SPPO, arXiv 2604.08865",
             "token ratio, eps 0.2, dual clip 3, prompt-only scalar critic, A = R - sigmoid(z(x)), BCE critic "
             "loss, G = 1; 2 minibatches per rollout (the official 1.5B scripts; 16 for 7B); the paper samples "
             "at temperature 0.6 (`sampling.temperature`, set in configs/qwen2.5-math-1.5b_sppo.yaml)"),
    "gmpo": ("GMPO, arXiv 2507.20673",
             "geometric mean per response of token ratios clipped in log space to (-0.4, 0.4) by the sign "
             "of A, seq-mean-token-mean"),
    "cispo": ("CISPO (MiniMax-M1), arXiv 2506.13585",
              "-sg(clip(w, 0, 1 + 5)) * A * logp per token (no token dropped; eps_high 5 [project choice]), "
              "token-mean, no KL"),
    "clip_cov": ("Clip-Cov, arXiv 2505.22617",
                 "token clip 0.2, loss 0 on a random 2e-4 of the tokens with covariance in (1, 5) (needs rng), "
                 "token-mean"),
    "kl_cov": ("KL-Cov, arXiv 2505.22617",
               "-A * r plus |logp - old_logp| on the top 2e-3 tokens by covariance (no clip), token-mean"),
    "top_entropy": ("Beyond the 80/20 rule, arXiv 2506.01939",
                    "DAPO's loss, dynamic sampling and overlong penalty with the policy gradient only on tokens "
                    "at or above the 80th entropy percentile of the batch (one minibatch per rollout)"),
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
