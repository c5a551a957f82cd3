"""The weighted combination of the rewards a `RewardConfig` names: total = sum_k w_k * scores_k."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sspo_jax.rewards.config import RewardConfig
from sspo_jax.rewards.inputs import RewardInput
from sspo_jax.rewards.output import CombinedRewards, RewardOutput
from sspo_jax.rewards.registry import RewardFunction, get_reward


def resolve_rewards(cfg: RewardConfig) -> dict[str, RewardFunction]:
    """Every reward `cfg.weights` names, resolved (registered names and ``module:function`` specs).

    Training calls it before anything else so that a typo fails at start-up, while loading a config
    (for ``eval``, ``export``, ``compare``) never needs the rewards to be importable.

    Raises:
      UnknownRewardError: a name is neither registered nor an importable spec; the message starts
        with ``rewards.weights``.
    """
    out = {}
    for name, _ in cfg.weights:
        try:
            out[name] = get_reward(name)
        except KeyError as err:
            text = str(err)
            raise type(err)(f"rewards.weights names an {text}" if text.startswith("unknown reward")
                            else f"rewards.weights: {text}") from None
    return out


def compute_rewards(
    responses: Sequence[str] | RewardInput,
    golds: Sequence[str] | None = None,
    cfg: RewardConfig | None = None,
    *,
    metas: Sequence[dict] | None = None,
    response_lengths: np.ndarray | None = None,
    truncated: np.ndarray | None = None,
) -> CombinedRewards:
    """Run every reward in ``cfg.weights`` on the same input and combine them by weight.

    Args:
      responses: N decoded responses, or a whole `RewardInput` (then `golds`, `metas`,
        `response_lengths` and `truncated` come from it).
      golds: N gold answers (repeated per group member).
      cfg: `RewardConfig` (default: math reward only, weight 1).
      metas: N metadata dicts (needed by ``reasoning_gym``).
      response_lengths: int [N] response token counts (needed by ``overlong``).
      truncated: bool [N], responses cut at the generation limit (passed through).
    Returns:
      `CombinedRewards`: total float32 [N], each function's `RewardOutput`, the weights.
    Raises:
      ValueError: an input's length is not N, or a reward returns scores not of shape [N];
        whatever a reward function raises (e.g. a missing input it needs).
      UnknownRewardError: a name in ``cfg.weights`` does not resolve.
    """
    cfg = cfg if cfg is not None else RewardConfig()
    inp = responses if isinstance(responses, RewardInput) else RewardInput(
        responses, golds, metas, response_lengths, truncated)
    n = len(inp)
    total = np.zeros(n, dtype=np.float32)
    per_function: dict[str, RewardOutput] = {}
    for name, fn in resolve_rewards(cfg).items():
        out = fn.score(inp, cfg)
        if out.scores.shape != (n,):
            raise ValueError(f"reward {name!r} returned scores of shape {out.scores.shape}, expected ({n},)")
        per_function[name] = out
        total += np.float32(cfg.weight_map[name]) * out.scores
    return CombinedRewards(total=total, per_function=per_function, weights=cfg.weight_map)
