"""Run-dependent algorithm settings, in one place: DAPO's overlong shaping and Dr. GRPO's constant.

Both depend on the generation budget ``sampling.max_new_tokens`` (L_max), which the algorithm
preset cannot know. DAPO's soft overlong penalty (ALGORITHMS.md 4) is configured by
``algorithm.overlong_buffer_frac`` (L_cache = frac * L_max), ``algorithm.overlong_penalty_factor``
and ``algorithm.overlong_reward_span``: DAPO's rewards are +-1, so its penalty in [-1, 0] is half
the reward range; here it is scaled by ``span / 2`` to keep that weight against this project's 0/1
correctness rewards (span 1: the penalty lies in [-0.5, 0] at factor 1). The registry's ``overlong`` reward function computes the same penalty from its own
``rewards.overlong_*`` lengths for use outside training, and the training config refuses both
at once (a double penalty).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from sspo_jax.algorithms.config import AlgorithmConfig
from sspo_jax.rewards import overlong_penalty


@dataclasses.dataclass(frozen=True)
class OverlongShaping:
    """DAPO's soft overlong penalty added to the total reward.

    Attributes:
      max_len: L_max in tokens (the generation budget).
      cache_len: L_cache in tokens, the soft zone below L_max (>= 1).
      factor: the weight of R_len in [-1, 0]: ``overlong_penalty_factor * overlong_reward_span / 2``
        (DAPO's +-1 rewards: 1; 0/1 rewards: 0.5).
    """

    max_len: int
    cache_len: int
    factor: float


def overlong_shaping(alg: AlgorithmConfig, max_new_tokens: int) -> Optional[OverlongShaping]:
    """The shaping a run applies: None when ``alg.overlong_buffer_frac`` is None; the penalty's
    weight is ``overlong_penalty_factor * overlong_reward_span / 2`` (module docstring)."""
    if alg.overlong_buffer_frac is None:
        return None
    cache = max(1, int(round(alg.overlong_buffer_frac * max_new_tokens)))
    factor = float(alg.overlong_penalty_factor) * float(alg.overlong_reward_span) / 2.0
    return OverlongShaping(max_len=max_new_tokens, cache_len=cache, factor=factor)


def apply_shaping(rewards: np.ndarray, lengths: np.ndarray,
                  shaping: Optional[OverlongShaping]) -> tuple[np.ndarray, dict[str, float]]:
    """``rewards + factor * R_len(lengths)`` (fp32 [N]) and the mean penalty as a metric.

    Args:
      rewards: fp32 [N] total rewards of the reward functions.
      lengths: int [N] response token counts.
      shaping: the run's shaping; None returns `rewards` unchanged and no metric.
    """
    if shaping is None:
        return rewards, {}
    pen = overlong_penalty(lengths, shaping.max_len, shaping.cache_len) * shaping.factor
    return (rewards + pen).astype(np.float32), {"reward/overlong_penalty_mean": float(np.mean(pen))}


def loss_config(alg: AlgorithmConfig, max_new_tokens: int) -> AlgorithmConfig:
    """The algorithm the update trains with: Dr. GRPO's ``seq-mean-token-sum-norm`` divides each
    response's token sum by the maximum generation length (ALGORITHMS.md 4) unless
    ``alg.loss_norm_constant`` is set, not by the row width (which changes with the prompt bucket)."""
    if alg.loss_agg_mode == "seq-mean-token-sum-norm" and alg.loss_norm_constant is None:
        return alg.replace(loss_norm_constant=float(max_new_tokens))
    return alg
