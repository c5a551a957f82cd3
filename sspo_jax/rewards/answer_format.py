"""Format reward: 1.0 when a response states its final answer in the expected form.

The expected form is the one `RewardConfig.extraction` reads: a non-empty last ``\\boxed{}``
(``boxed``, and also for ``math_verify``) or a match of `RewardConfig.answer_patterns`
(``regex``). It says nothing about correctness.
"""

from __future__ import annotations


import numpy as np

from sspo_jax.rewards.config import RewardConfig
from sspo_jax.rewards.extract import extract_answer
from sspo_jax.rewards.inputs import RewardInput
from sspo_jax.rewards.output import RewardOutput
from sspo_jax.rewards.registry import register_reward


@register_reward("format")
def format_reward(inp: RewardInput, cfg: RewardConfig) -> RewardOutput:
    """1.0 where a response has an answer in the configured form, else 0.0.

    Args:
      inp: N decoded responses (only the responses are read).
      cfg: settings (called loosely, `overrides` replace single fields; see `RewardFunction`).
    Returns:
      `RewardOutput` with scores float32 [N] in {0, 1} and ``no_answer`` = the count of zeros.
    """
    responses = inp.responses
    if cfg.extraction == "math_verify":
        cfg = cfg.replace(extraction="boxed")
    present = np.array([extract_answer(r, cfg) is not None for r in responses], dtype=np.float32)
    return RewardOutput(present, no_answer=int(len(responses) - present.sum()))
