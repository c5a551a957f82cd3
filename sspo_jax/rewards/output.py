"""Result types of reward functions: `RewardOutput` (one function) and `CombinedRewards` (all)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class RewardOutput:
    """Scores of one reward function over N responses, with what went wrong counted.

    Attributes:
      scores: float32 [N]. In [0, 1] for correctness/format rewards, [-1, 0] for the overlong one.
      failures: responses whose verifier raised or whose worker crashed (scored 0).
      timeouts: responses whose verification exceeded the time limit (scored 0).
      no_answer: responses with no answer in the expected form (scored 0; not an error).
      gold_unparsed: responses whose gold answer the function cannot parse (scored 0; a data
        problem: the trainer stops when too many of a step's golds fail, see
        ``rewards.max_gold_unparsed_frac``).
      gold_unparsed_row: the index of one such response (to name its data row), or None.
    """

    scores: np.ndarray
    failures: int = 0
    timeouts: int = 0
    no_answer: int = 0
    gold_unparsed: int = 0
    gold_unparsed_row: int | None = None

    def __post_init__(self) -> None:
        scores = np.asarray(self.scores, dtype=np.float32)
        if scores.ndim != 1:
            raise ValueError(f"RewardOutput.scores must be 1-D [N], got shape {scores.shape}")
        object.__setattr__(self, "scores", scores)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat scalar metrics: mean score and the counts, keys prefixed by `prefix`."""
        mean = float(self.scores.mean()) if self.scores.size else 0.0
        return {
            f"{prefix}mean": mean,
            f"{prefix}failures": float(self.failures),
            f"{prefix}timeouts": float(self.timeouts),
            f"{prefix}no_answer": float(self.no_answer),
            f"{prefix}gold_unparsed": float(self.gold_unparsed),
        }


@dataclasses.dataclass(frozen=True)
class CombinedRewards:
    """Weighted combination of several reward functions over N responses.

    Attributes:
      total: float32 [N], sum over functions of weight * scores.
      per_function: name -> `RewardOutput` (scores float32 [N] and counts), in config order.
      weights: name -> weight used.
    """

    total: np.ndarray
    per_function: dict[str, RewardOutput]
    weights: dict[str, float]

    @property
    def failures(self) -> int:
        """Failures summed over all functions."""
        return sum(out.failures for out in self.per_function.values())

    @property
    def timeouts(self) -> int:
        """Timeouts summed over all functions."""
        return sum(out.timeouts for out in self.per_function.values())

    def metrics(self, prefix: str = "reward/") -> dict[str, float]:
        """Flat scalar metrics for logging: total mean, and each function's mean and counts."""
        out = {f"{prefix}total_mean": float(self.total.mean()) if self.total.size else 0.0,
               f"{prefix}failures": float(self.failures), f"{prefix}timeouts": float(self.timeouts)}
        for name, result in self.per_function.items():
            out.update(result.metrics(f"{prefix}{name}/"))
        return out
