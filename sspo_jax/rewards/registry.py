"""Reward functions by name, and their weighted combination from a `RewardConfig`.

Every registered function has the same signature::

    fn(responses: Sequence[str], golds: Sequence[str], *, metas: Sequence[dict] | None,
       response_lengths: np.ndarray | None, truncated: np.ndarray | None,
       cfg: RewardConfig) -> RewardOutput

Built in: ``math`` (math-verify equivalence), ``exact_match`` (numeric equality), ``format``
(answer present in the expected form), ``overlong`` (DAPO soft length penalty, tokens),
``reasoning_gym`` (the task's own scorer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from sspo_jax.rewards.output import CombinedRewards, RewardOutput

RewardFn = Callable[..., RewardOutput]

_REGISTRY: dict[str, RewardFn] = {}


def register_reward(name: str, fn: RewardFn, *, overwrite: bool = False) -> None:
    """Make `fn` (the uniform signature above) available under `name` in `RewardConfig.weights`.

    Raises:
      ValueError: `name` is empty or not a string, or already names another function and
        `overwrite` is false.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a reward name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not overwrite and _REGISTRY[name] is not fn:
        raise ValueError(f"a reward named {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = fn


def registered_rewards() -> tuple[str, ...]:
    """Names of all registered reward functions."""
    return tuple(_REGISTRY)


def get_reward(name: str) -> RewardFn:
    """The reward function registered as `name`.

    Raises:
      KeyError: `name` is not registered (the message lists the known names).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown reward {name!r}; known rewards: {sorted(_REGISTRY)}") from None


def compute_rewards(
    responses: Sequence[str],
    golds: Sequence[str],
    cfg: "RewardConfig | None" = None,
    *,
    metas: Sequence[dict] | None = None,
    response_lengths: np.ndarray | None = None,
    truncated: np.ndarray | None = None,
) -> CombinedRewards:
    """Run every reward in ``cfg.weights`` and combine: total = sum_k w_k * scores_k.

    Args:
      responses: N decoded responses; golds: N gold answers (repeated per group member).
      cfg: `RewardConfig` (default: math reward only, weight 1).
      metas: N metadata dicts (needed by ``reasoning_gym``).
      response_lengths: int [N] response token counts (needed by ``overlong``).
      truncated: bool [N], responses cut at the generation limit (passed through).
    Returns:
      `CombinedRewards`: total float32 [N], each function's `RewardOutput`, the weights.
    Raises:
      ValueError: an input's length is not N, or a reward returns scores not of shape [N];
        whatever a reward function raises (e.g. a missing input it needs).
    """
    from sspo_jax.rewards.config import RewardConfig

    cfg = cfg if cfg is not None else RewardConfig()
    n = len(responses)
    if len(golds) != n:
        raise ValueError(f"got {n} responses but {len(golds)} gold answers")
    for name, value in (("metas", metas), ("response_lengths", response_lengths), ("truncated", truncated)):
        if value is not None and len(value) != n:
            raise ValueError(f"got {len(value)} {name} for {n} responses")
    total = np.zeros(n, dtype=np.float32)
    per_function: dict[str, RewardOutput] = {}
    for name, weight in cfg.weights:
        out = get_reward(name)(responses, golds, metas=metas, response_lengths=response_lengths,
                               truncated=truncated, cfg=cfg)
        if out.scores.shape != (n,):
            raise ValueError(f"reward {name!r} returned scores of shape {out.scores.shape}, expected ({n},)")
        per_function[name] = out
        total += np.float32(weight) * out.scores
    return CombinedRewards(total=total, per_function=per_function, weights=cfg.weight_map)


def _register_builtins() -> None:
    from sspo_jax.rewards.answer_format import format_reward
    from sspo_jax.rewards.exact_match import exact_match_reward
    from sspo_jax.rewards.gym_tasks import reasoning_gym_reward
    from sspo_jax.rewards.math_answer import math_reward
    from sspo_jax.rewards.overlong import overlong_reward

    for name, fn in (("math", math_reward), ("exact_match", exact_match_reward), ("format", format_reward),
                     ("overlong", overlong_reward), ("reasoning_gym", reasoning_gym_reward)):
        register_reward(name, fn)


_register_builtins()
