"""The reasoning_gym reward scores items with the task's own scorer through the registry."""

from __future__ import annotations

import pytest

pytest.importorskip("reasoning_gym")

from sspo_jax.data import DataConfig, build_source  # noqa: E402
from sspo_jax.rewards import RewardConfig, compute_rewards  # noqa: E402


def test_reasoning_gym_reward_uses_task_scorer():
    source = build_source(DataConfig(source="reasoning_gym", reasoning_gym_task="basic_arithmetic", size=6,
                                     generator_seed=3))
    records = [source[i] for i in range(len(source))]
    right = [f"so \\boxed{{{r.answer}}}" for r in records]
    wrong = ["\\boxed{not a number}" for _ in records]
    cfg = RewardConfig(weights={"reasoning_gym": 1.0})
    metas = [r.meta for r in records] * 2
    out = compute_rewards(right + wrong, [r.answer for r in records] * 2, cfg, metas=metas)
    assert out.total.tolist() == [1.0] * 6 + [0.0] * 6
    assert out.per_function["reasoning_gym"].failures == 0


def test_reasoning_gym_reward_needs_metas():
    with pytest.raises(ValueError, match="metas"):
        compute_rewards(["\\boxed{1}"], ["1"], RewardConfig(weights={"reasoning_gym": 1.0}))
    with pytest.raises(ValueError, match="ReasoningGymSource"):
        compute_rewards(["\\boxed{1}"], ["1"], RewardConfig(weights={"reasoning_gym": 1.0}), metas=[{}])
