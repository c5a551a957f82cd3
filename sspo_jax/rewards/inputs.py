"""`RewardInput`: the one record every reward function reads (N responses and what goes with them)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class RewardInput:
    """N decoded responses with their gold answers and rollout facts, validated once.

    Attributes:
      responses: N decoded response texts.
      golds: N gold answers (each prompt's answer repeated once per sampled response).
      metas: N metadata dicts (the ``reasoning_gym`` reward reads its task from them), or None.
      response_lengths: int [N] response token counts (never characters; ``overlong`` needs them),
        or None.
      truncated: bool [N], responses cut at the generation limit, or None.

    Raises:
      ValueError: an input's length is not N.
    """

    responses: Sequence[str]
    golds: Sequence[str]
    metas: Sequence[dict] | None = None
    response_lengths: np.ndarray | None = None
    truncated: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.responses)
        if len(self.golds) != n:
            raise ValueError(f"got {n} responses but {len(self.golds)} gold answers; "
                             "repeat each gold once per sampled response")
        for name in ("metas", "response_lengths", "truncated"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"got {len(value)} {name} for {n} responses")

    def __len__(self) -> int:
        return len(self.responses)
