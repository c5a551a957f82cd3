"""Imports every built-in reward module; each registers its reward with `@register_reward`."""

from sspo_jax.rewards import answer_format, exact_match, gym_tasks, math_answer, overlong  # noqa: F401

BUILTIN_REWARDS = ("math", "exact_match", "format", "overlong", "reasoning_gym")
