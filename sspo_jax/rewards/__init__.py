"""Verifiable rewards: math-verify in a process pool, exact match, format, DAPO overlong shaping.

Entry points::

    out = sspo_jax.rewards.math_reward(responses, golds, workers=2, timeout_s=5)
    out.scores, out.failures, out.timeouts          # float32 [N] in [0, 1], counts

    @sspo_jax.rewards.register_reward("my_reward")     # fn(inp: RewardInput, cfg) -> RewardOutput
    def my_reward(inp, cfg): ...

    cfg = sspo_jax.rewards.RewardConfig(weights={"math": 1.0, "overlong": 1.0})
    res = sspo_jax.rewards.compute_rewards(responses, golds, cfg, response_lengths=lengths)
    res.total, res.per_function["math"].scores, res.metrics()

This package imports neither JAX nor the rest of sspo_jax, so pool workers start quickly.
"""

from sspo_jax.rewards.answer_format import format_reward
from sspo_jax.rewards.combine import compute_rewards, resolve_rewards
from sspo_jax.rewards.config import RewardConfig, RewardConfigError, make_config
from sspo_jax.rewards.exact_match import answers_match, as_number, exact_match_reward
from sspo_jax.rewards.extract import extract_answer, gold_answer, gold_answer_text, last_boxed, last_pattern_match
from sspo_jax.rewards.gym_tasks import reasoning_gym_reward
from sspo_jax.rewards.inputs import RewardInput
from sspo_jax.rewards.math_answer import math_reward
from sspo_jax.rewards.output import CombinedRewards, RewardOutput
from sspo_jax.rewards.overlong import overlong_penalty, overlong_reward
from sspo_jax.rewards.pool import PoolResult, VerifierPool, close_pools, get_pool
from sspo_jax.rewards.registry import (RewardFunction, UnknownRewardError, get_reward, register_reward,
                                      registered_rewards, reward_function)


def close() -> None:
    """Stop the shared verification worker processes (they restart on the next call)."""
    close_pools()


__all__ = [
    "CombinedRewards", "PoolResult", "RewardConfig", "RewardConfigError", "RewardFunction", "RewardInput",
    "RewardOutput", "UnknownRewardError", "VerifierPool", "answers_match", "as_number", "close", "close_pools",
    "compute_rewards", "exact_match_reward", "extract_answer", "format_reward", "get_pool", "get_reward",
    "gold_answer", "gold_answer_text", "last_boxed", "last_pattern_match", "make_config", "math_reward",
    "overlong_penalty", "overlong_reward", "reasoning_gym_reward", "register_reward", "registered_rewards",
    "resolve_rewards", "reward_function",
]
