"""DAPO's soft overlong penalty (ALGORITHMS.md section 4), measured in tokens, never characters.

    R_len(y) = 0                                 if |y| <= L_max - L_cache
             = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
             = -1                                if |y| > L_max

It is added to the correctness reward by its weight in `RewardConfig.weights`: DAPO's rewards are
+-1, so against 0/1 correctness rewards weight 0.5 gives it the paper's relative weight (training
uses `algorithm.overlong_buffer_frac` instead, scaled by `algorithm.overlong_reward_span`).
"""

from __future__ import annotations


import numpy as np

from sspo_jax.rewards.config import RewardConfig
from sspo_jax.rewards.inputs import RewardInput
from sspo_jax.rewards.output import RewardOutput
from sspo_jax.rewards.registry import register_reward


def overlong_penalty(lengths: np.ndarray, max_len: int, cache_len: int) -> np.ndarray:
    """DAPO's R_len per response (the equation in the module docstring).

    Args:
      lengths: int [N] response token counts |y|.
      max_len: L_max in tokens.
      cache_len: L_cache in tokens, ``1 <= cache_len <= max_len``.
    Returns:
      float32 [N] in [-1, 0].
    Raises:
      ValueError: `lengths` is not a 1-D integer array, or `cache_len` is out of range.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"response lengths must be a 1-D integer array of token counts, got "
                         f"dtype {lengths.dtype} shape {lengths.shape}")
    if not 1 <= cache_len <= max_len:
        raise ValueError(f"need 1 <= cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")
    soft_start = max_len - cache_len
    soft = (soft_start - lengths.astype(np.float64)) / cache_len
    out = np.where(lengths <= soft_start, 0.0, np.where(lengths <= max_len, soft, -1.0))
    return out.astype(np.float32)


@register_reward("overlong")
def overlong_reward(inp: RewardInput, cfg: RewardConfig) -> RewardOutput:
    """`overlong_penalty` of `response_lengths` with L_max = cfg.overlong_max_len and
    L_cache = cfg.overlong_cache_len.

    Args:
      inp: N responses (only their number is used) with ``response_lengths``, int [N] response
        token counts (never characters).
      cfg: settings (called loosely, `overrides` replace single fields; see `RewardFunction`).
    Returns:
      `RewardOutput` with scores float32 [N] in [-1, 0].
    Raises:
      ValueError: `response_lengths` is missing or of the wrong length or type.
    """
    response_lengths = inp.response_lengths
    if response_lengths is None:
        raise ValueError("the 'overlong' reward needs response_lengths (response token counts from "
                         "the rollout, an int array [N]); character counts are not a substitute")
    return RewardOutput(overlong_penalty(np.asarray(response_lengths), cfg.overlong_max_len,
                                         cfg.overlong_cache_len))
