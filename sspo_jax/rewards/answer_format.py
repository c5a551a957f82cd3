"""Format reward: 1.0 when a response states its final answer in the expected form.

The expected form is the one `RewardConfig.extraction` reads: a non-empty last ``\\boxed{}``
(``boxed``, and also for ``math_verify``) or a match of `RewardConfig.answer_patterns`
(``regex``). It says nothing about correctness.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sspo_jax.rewards.config import RewardConfig, make_config
from sspo_jax.rewards.extract import extract_answer
from sspo_jax.rewards.output import RewardOutput


def format_reward(
    responses: Sequence[str],
    golds: Sequence[str],
    *,
    metas: Sequence[dict] | None = None,
    response_lengths: np.ndarray | None = None,
    truncated: np.ndarray | None = None,
    cfg: RewardConfig | None = None,
    **overrides: object,
) -> RewardOutput:
    """1.0 where a response has an answer in the configured form, else 0.0.

    Args:
      responses: N decoded responses.
      golds, metas, response_lengths, truncated: unused (the registry's uniform signature).
      cfg: settings (default `RewardConfig()`); `overrides` replace single fields.
    Returns:
      `RewardOutput` with scores float32 [N] in {0, 1} and ``no_answer`` = the count of zeros.
    """
    del golds, metas, response_lengths, truncated
    cfg = make_config(cfg, **overrides)
    if cfg.extraction == "math_verify":
        cfg = cfg.replace(extraction="boxed")
    present = np.array([extract_answer(r, cfg) is not None for r in responses], dtype=np.float32)
    return RewardOutput(present, no_answer=int(len(responses) - present.sum()))
