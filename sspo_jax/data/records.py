"""Prompt records, the `PromptSource` protocol every data source follows, and `DataError`."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable


from sspo_jax.errors import DataError  # noqa: E402 - bad data: names the file and line and the fix


@dataclasses.dataclass(frozen=True)
class PromptRecord:
    """One prompt with its reference answer.

    Attributes:
      prompt: the problem text, before any template is applied (non-empty).
      answer: the gold answer text the reward compares against.
      meta: extra information carried to the reward functions (source file and line, the
        reasoning-gym entry, the arithmetic solution, configured extra fields).
    """

    prompt: str
    answer: str
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@runtime_checkable
class PromptSource(Protocol):
    """A finite, indexable, deterministic collection of `PromptRecord`s.

    ``source[i]`` must return the same record every time (shuffling and resumption rely on it);
    `name` describes the source in messages.
    """

    name: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> PromptRecord: ...


class ListSource:
    """A `PromptSource` over records held in memory (tests, notebooks, small custom sets).

    Raises:
      DataError: `records` is empty.
    """

    def __init__(self, records: list[PromptRecord], name: str = "in-memory records") -> None:
        if not records:
            raise DataError(f"{name}: no records")
        self.records = list(records)
        self.name = name

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PromptRecord:
        return self.records[index]
