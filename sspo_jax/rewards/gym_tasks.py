"""reasoning-gym reward: each item is scored by its own task's ``score_answer``.

Records from `sspo_jax.data.ReasoningGymSource` carry, in their metadata, the task name under
``reasoning_gym_task`` and the generated entry (question, answer, metadata) under
``reasoning_gym_entry``; the scorer of that task (``reasoning_gym.get_score_answer_fn``) compares
the extracted answer with the entry. Needs the optional ``data`` extra (reasoning-gym).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from sspo_jax.rewards.config import RewardConfig
from sspo_jax.rewards.extract import extract_answer, last_boxed
from sspo_jax.rewards.inputs import RewardInput
from sspo_jax.rewards.output import RewardOutput
from sspo_jax.rewards.registry import register_reward

TASK_KEY = "reasoning_gym_task"
ENTRY_KEY = "reasoning_gym_entry"


@functools.lru_cache(maxsize=None)
def _scorer(task: str) -> Callable[[str | None, dict], float]:
    try:
        import reasoning_gym
    except ImportError as exc:
        raise ImportError("the 'reasoning_gym' reward needs reasoning-gym: pip install 'sspo-jax[data]'") from exc
    return reasoning_gym.get_score_answer_fn(task)


@register_reward("reasoning_gym")
def reasoning_gym_reward(inp: RewardInput, cfg: RewardConfig) -> RewardOutput:
    """Scores from each item's own reasoning-gym scorer, clipped to [0, 1].

    The answer passed to the scorer is extracted per ``cfg.extraction`` (``math_verify`` mode
    uses the last boxed content); a response without one scores 0 (``no_answer``), a scorer
    that raises scores 0 and is counted as a failure.

    Args:
      inp: N decoded responses with ``metas``, N dicts holding the task name and generated entry
        (from a `ReasoningGymSource`).
      cfg: settings (called loosely, `overrides` replace single fields; see `RewardFunction`).
    Returns:
      `RewardOutput` with scores float32 [N] in [0, 1] and the failure and no-answer counts.
    Raises:
      ValueError: `metas` is missing, of the wrong length, or a dict lacks the task keys.
      ImportError: reasoning-gym is not installed.
    """
    responses, metas = inp.responses, inp.metas
    if metas is None or len(metas) != len(responses):
        raise ValueError("the 'reasoning_gym' reward needs metas (one dict per response, from a "
                         f"ReasoningGymSource) with keys {TASK_KEY!r} and {ENTRY_KEY!r}")
    scores = np.zeros(len(responses), dtype=np.float32)
    failures = no_answer = 0
    for i, (response, meta) in enumerate(zip(responses, metas)):
        if TASK_KEY not in meta or ENTRY_KEY not in meta:
            raise ValueError(f"metas[{i}] has no {TASK_KEY!r}/{ENTRY_KEY!r}: the 'reasoning_gym' reward "
                             "only scores records from a ReasoningGymSource")
        answer = last_boxed(response) if cfg.extraction == "math_verify" else extract_answer(response, cfg)
        if answer is None:
            no_answer += 1
            continue
        try:
            score = float(_scorer(meta[TASK_KEY])(answer, meta[ENTRY_KEY]))
        except Exception:  # the task's scorer crashed: scored 0 and counted
            failures += 1
            continue
        scores[i] = min(1.0, max(0.0, score))
    return RewardOutput(scores, failures=failures, no_answer=no_answer)
