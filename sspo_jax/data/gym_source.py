"""Prompts from reasoning-gym procedural task generators (optional ``data`` extra).

Each record's meta carries the task name and the generated entry, which the ``reasoning_gym``
reward (`sspo_jax.rewards.gym_tasks`) hands to the task's own scorer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sspo_jax.data.records import DataError, PromptRecord
from sspo_jax.rewards.gym_tasks import ENTRY_KEY, TASK_KEY


class ReasoningGymSource:
    """`size` items of reasoning-gym task `task`, generated deterministically from `seed`.

    Args:
      task: a registered reasoning-gym dataset name, e.g. ``basic_arithmetic``, ``chain_sum``.
      size: number of items.
      seed: generator seed.
      options: further keyword arguments of the task's config (difficulty knobs).
    Raises:
      DataError: an unknown task, ``size < 1`` or options the task rejects.
      ImportError: reasoning-gym is not installed.
    """

    def __init__(self, task: str, size: int = 1000, seed: int = 0, options: Mapping[str, Any] | None = None) -> None:
        try:
            import reasoning_gym
            from reasoning_gym.factory import DATASETS
        except ImportError as exc:
            raise ImportError("reasoning-gym sources need the data extra: pip install 'sspo-jax[data]'") from exc
        if task not in DATASETS:
            raise DataError(f"data.reasoning_gym_task={task!r} is not a reasoning-gym task; known tasks: "
                            f"{sorted(DATASETS)}")
        if size < 1:
            raise DataError(f"data.size must be >= 1, got {size}")
        try:
            self.dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **dict(options or {}))
        except (TypeError, ValueError, AssertionError) as exc:
            raise DataError(f"reasoning-gym task {task!r} rejected data.reasoning_gym_options "
                            f"{dict(options or {})}: {exc}") from exc
        self.task, self.size = task, size
        self.name = f"reasoning_gym:{task}(size={size}, seed={seed})"

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> PromptRecord:
        if not 0 <= index < self.size:
            raise IndexError(f"{self.name}: index {index} out of range")
        entry = self.dataset[index]
        answer = entry.get("answer")
        return PromptRecord(entry["question"], "" if answer is None else str(answer),
                            {TASK_KEY: self.task, ENTRY_KEY: entry, "index": index})
