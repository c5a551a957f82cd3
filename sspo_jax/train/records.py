"""The host-side records that flow between the stages of an RL step (numpy rows, one per response).

    sample  -> Rollout          tokens, masks, sampler log-probs, lengths, truncation flags
    score   -> ScoredRollout    + total rewards, correctness, the reward functions' metrics
    prepare -> RolloutBatch     (sspo_jax.train.state) device arrays with token stats and advantages

Every per-row field is declared once, with the value its prompt columns are padded with
(``metadata={"pad": value}`` on [N, T] fields, ``{"row": True}`` on [N] fields); `take_rows`,
`widen`, `concat` and `trim` work from those declarations, so adding a field is one line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


def _cols(pad: Any) -> Any:
    return dataclasses.field(metadata={"pad": pad})


def _row() -> Any:
    return dataclasses.field(metadata={"row": True})


@dataclasses.dataclass(frozen=True)
class Rollout:
    """Sampled rows of one batch (this process's rows in a multi-process job).

    Prompts are left-padded to `prompt_width` columns; responses start at column `prompt_width`.

    Attributes:
      tokens: int32 [N, T] prompt then response tokens.
      attention_mask: bool [N, T], False on padding.
      response_mask: bool [N, T], True on generated tokens up to and including the stop token.
      sampler_logp: fp32 [N, T], the sampler's log-prob of each response token (0 elsewhere).
      lengths: int32 [N] response token counts (stop token included).
      truncated: bool [N], the response reached ``max_new_tokens`` without a stop token.
      prompt_width: P, the prompt columns.
    """

    tokens: np.ndarray = _cols(0)
    attention_mask: np.ndarray = _cols(False)
    response_mask: np.ndarray = _cols(False)
    sampler_logp: np.ndarray = _cols(0.0)
    lengths: np.ndarray = _row()
    truncated: np.ndarray = _row()
    prompt_width: int


@dataclasses.dataclass(frozen=True)
class ScoredRollout(Rollout):
    """A `Rollout` with its rewards.

    Attributes:
      rewards: fp32 [N] total reward (weighted reward functions plus any length shaping).
      correct: fp32 [N] score of the correctness reward ``eval.reward`` (1 = correct).
      reward_metrics: scalar metrics of the reward functions (means, failures, timeouts).
    """

    rewards: np.ndarray = _row()
    correct: np.ndarray = _row()
    reward_metrics: dict = dataclasses.field(default_factory=dict)


def _per_row(record: Rollout) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(record) if "pad" in f.metadata or "row" in f.metadata]


def take_rows(record: Rollout, idx: np.ndarray) -> Rollout:
    """The rows `idx` (int [K]) of every per-row field: a record of K rows."""
    return dataclasses.replace(record, **{f.name: getattr(record, f.name)[idx] for f in _per_row(record)})


def _left_pad(x: np.ndarray, width: int, value: Any) -> np.ndarray:
    extra = width - x.shape[1]
    if extra <= 0:
        return x
    return np.concatenate([np.full((x.shape[0], extra, *x.shape[2:]), value, x.dtype), x], axis=1)


def widen(record: Rollout, prompt_width: int) -> Rollout:
    """Left-pads the prompt region to `prompt_width` columns (masks False; positions follow the masks)."""
    if prompt_width <= record.prompt_width:
        return record
    total = prompt_width - record.prompt_width + record.tokens.shape[1]
    cols = {f.name: _left_pad(getattr(record, f.name), total, f.metadata["pad"])
            for f in dataclasses.fields(record) if "pad" in f.metadata}
    return dataclasses.replace(record, prompt_width=prompt_width, **cols)


def padding_bounds(record: Rollout) -> tuple[np.ndarray, np.ndarray]:
    """Per row (int32 [N] each): the leading prompt-padding columns and the response length."""
    lead = np.argmax(record.attention_mask[:, :record.prompt_width], axis=1).astype(np.int32)
    lead[~record.attention_mask[:, :record.prompt_width].any(axis=1)] = record.prompt_width
    return lead, np.asarray(record.lengths, np.int32)


def trimmed_width(width: int, multiple: int, cap: int) -> int:
    """`width` rounded up to a step of ``max(multiple, 2**floor(log2(width)) / 8)``, at most `cap`.

    Steps grow with the width (8 per doubling), so a run compiles at most about 8 widths per
    octave of lengths and pads less than one `multiple` or 1/8 beyond the longest row (with the
    default multiple: 8-column steps up to 127 columns, 32-column steps from 256, 128 from 1024).
    """
    width = max(int(width), 1)
    step = max(multiple, 1 << max(0, width.bit_length() - 4))
    return min(cap, -(-width // step) * step)


def trim(record: Rollout, multiple: int, lead: int, longest: int) -> Rollout:
    """The record without the columns that are padding in every row, in `trimmed_width` steps.

    `lead`: the fewest leading padding columns of any row, so the longest prompt is
    ``prompt_width - lead`` columns; `longest`: the longest response. The kept prompt and response
    widths are those lengths rounded up by `trimmed_width` (a small set of shapes, each compiled
    once). Positions follow the attention mask and attention is causal, so every remaining
    column's log-probs, entropies and gradients are those of the full width (up to float summation
    order). Pass the bounds of the global batch in a multi-process job (every process must trim
    alike). `multiple` <= 0: the record unchanged.
    """
    if multiple <= 0:
        return record
    p, r = record.prompt_width, record.tokens.shape[1] - record.prompt_width
    if p < 1:
        return record
    drop = p - trimmed_width(p - min(max(lead, 0), p), multiple, p)  # at least one prompt column stays
    keep = trimmed_width(longest, multiple, r) if r > 0 else 0
    if drop == 0 and keep == r:
        return record
    cols = {f.name: getattr(record, f.name)[:, drop:p + keep] for f in dataclasses.fields(record) if "pad" in f.metadata}
    return dataclasses.replace(record, prompt_width=p - drop, **cols)


def concat(parts: list[Rollout]) -> Rollout:
    """The rows of `parts` in order, widened to the widest prompt; other fields from ``parts[0]``."""
    width = max(p.prompt_width for p in parts)
    parts = [widen(p, width) for p in parts]
    rows = {f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in _per_row(parts[0])}
    return dataclasses.replace(parts[0], prompt_width=width, **rows)


def with_rewards(rollout: Rollout, rewards: np.ndarray, correct: np.ndarray,
                 reward_metrics: dict[str, float]) -> ScoredRollout:
    """`rollout` with its rewards (fp32 [N]), correctness (fp32 [N]) and reward metrics."""
    base = {f.name: getattr(rollout, f.name) for f in dataclasses.fields(Rollout)}
    return ScoredRollout(**base, rewards=np.asarray(rewards, np.float32), correct=np.asarray(correct, np.float32),
                         reward_metrics=dict(reward_metrics))
