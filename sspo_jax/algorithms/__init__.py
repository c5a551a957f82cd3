"""The algorithm core: pure, model-free, jit- and vmap-able loss math.

Imports nothing else from sspo_jax. Typical use::

    cfg = presets.get("sspo")
    seg = segment_ids(tokens, response_mask, table, cfg.segmentation)
    out = policy_loss(cfg, logp, old_logp, advantages, response_mask,
                      segment_ids=seg, entropy=old_entropy)
    out.loss_sum, out.denominator, out.metrics
"""

from sspo_jax.algorithms import (advantages, aggregation, cispo, clipping, covariance, entropy_mask, gmpo, kl,
                                 losses, objectives, presets, ratios, segments)
from sspo_jax.algorithms.aggregation import aggregate, safe_divide
from sspo_jax.algorithms.clipping import EntropyStats, clipped_surrogate, entropy_scale, segment_entropy_stats
from sspo_jax.algorithms.config import AlgorithmConfig, ConfigError, SegmentationConfig
from sspo_jax.algorithms.kl import kl_penalty
from sspo_jax.algorithms.losses import LossOutput, bce_critic_loss, clipped_value_loss, policy_loss
from sspo_jax.algorithms.segments import DelimiterTable, build_delimiter_table, segment_ids

__all__ = [
    "AlgorithmConfig", "ConfigError", "DelimiterTable", "EntropyStats", "LossOutput", "SegmentationConfig",
    "advantages", "aggregate", "aggregation", "bce_critic_loss", "build_delimiter_table", "cispo", "clipped_surrogate",
    "clipped_value_loss", "clipping", "covariance", "entropy_mask", "entropy_scale", "gmpo", "kl", "kl_penalty",
    "losses", "objectives", "policy_loss", "presets", "ratios", "safe_divide", "segment_entropy_stats", "segment_ids",
    "segments",
]
