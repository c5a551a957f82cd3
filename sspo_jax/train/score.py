"""Stage 2 of an RL step, the rewards: decode, verify, combine, shape, as a `ScoredRollout`.

    scored = score_rollout(rollout, batch, tokenizer, spec)

``rewards`` is the weighted sum of ``rewards.weights`` plus DAPO's overlong shaping when the
algorithm asks for it (`sspo_jax.train.shaping`); ``correct`` is the correctness reward
``eval.reward`` (the accuracy metric), taken from the combined run when it is one of the weighted
rewards and computed separately otherwise.

A batch in which more than ``rewards.max_gold_unparsed_frac`` of the responses have a gold answer
that a reward cannot parse stops the run (`check_gold_answers`): training on it would train on
nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from sspo_jax.data import PromptBatch
from sspo_jax.errors import TrainingError
from sspo_jax.errors import DataError
from sspo_jax.rewards import RewardConfig, RewardInput, compute_rewards
from sspo_jax.train import sample as sample_stage
from sspo_jax.train.records import Rollout, ScoredRollout, with_rewards
from sspo_jax.train.shaping import OverlongShaping, apply_shaping


@dataclasses.dataclass(frozen=True)
class ScoringSpec:
    """How a rollout is scored.

    Attributes:
      rewards: the reward functions, weights and verifier settings.
      correctness: the registered correctness reward that defines ``correct`` (score 1 = correct).
      shaping: DAPO's overlong shaping, or None.
    """

    rewards: RewardConfig
    correctness: str = "math"
    shaping: Optional[OverlongShaping] = None


def correctness_scores(reward_name: str, inp: RewardInput, rewards: RewardConfig) -> np.ndarray:
    """Scores of the correctness reward `reward_name` alone, float32 [N] (its weight replaced by 1)."""
    out = compute_rewards(inp, cfg=dataclasses.replace(rewards, weights=((reward_name, 1.0),)))
    return out.per_function[reward_name].scores


def _where(meta: dict[str, Any]) -> str:
    source = meta.get("source", "the data")
    if "line" in meta:
        return f"{source}:{meta['line']}"
    if "row" in meta:
        return f"{source}: row {meta['row']}"
    return str(source)


def check_gold_answers(combined: Any, golds: list[str], metas: list[dict], rewards: RewardConfig) -> None:
    """Raises `DataError` naming the file and line of one example when more than
    ``rewards.max_gold_unparsed_frac`` of the responses have a gold answer some reward cannot parse."""
    n = len(golds)
    for name, out in combined.per_function.items():
        if n and out.gold_unparsed > rewards.max_gold_unparsed_frac * n and out.gold_unparsed_row is not None:
            row = out.gold_unparsed_row
            raise DataError(f"{_where(metas[row] if row < len(metas) else {})}: reward {name!r} cannot parse the gold "
                            f"answer {golds[row]!r} ({out.gold_unparsed} of the batch's {n} responses have a gold answer "
                            f"it cannot parse, > rewards.max_gold_unparsed_frac={rewards.max_gold_unparsed_frac:g}): "
                            "fix the "
                            "answers (or data.answer_field / rewards.gold_extraction), or raise "
                            "rewards.max_gold_unparsed_frac")


def score_rollout(rollout: Rollout, batch: PromptBatch, tokenizer: Any, spec: ScoringSpec) -> ScoredRollout:
    """The rewards of `rollout`'s N rows (their prompts' golds and metas in `batch`).

    Returns:
      `ScoredRollout`: rewards fp32 [N] (weighted rewards + shaping), correct fp32 [N], and the reward
      metrics (per function means, failures, timeouts; ``reward/overlong_penalty_mean`` when shaped).
    """
    texts = sample_stage.decode_responses(tokenizer, rollout)
    inp = RewardInput(texts, batch.golds, batch.metas, rollout.lengths, rollout.truncated)
    combined = compute_rewards(inp, cfg=spec.rewards)
    check_gold_answers(combined, list(batch.golds), list(batch.metas), spec.rewards)
    metrics = combined.metrics()
    rewards, shaped = apply_shaping(combined.total.astype(np.float32), rollout.lengths, spec.shaping)
    metrics.update(shaped)
    if spec.correctness in combined.per_function:
        correct = combined.per_function[spec.correctness].scores
    else:
        alone = compute_rewards(inp, cfg=dataclasses.replace(spec.rewards, weights=((spec.correctness, 1.0),)))
        check_gold_answers(alone, list(batch.golds), list(batch.metas), spec.rewards)
        correct = alone.per_function[spec.correctness].scores
    return with_rewards(rollout, rewards, correct, metrics)


def check_reward_range(cfg: Any, rewards: Any, step: int) -> None:
    """SPPO's prompt critic is trained with a binary cross-entropy on the rewards, which has no
    minimum outside [0, 1]: a `TrainingError` when a step's rewards leave that range."""
    if cfg.algorithm.critic != "prompt" or not len(rewards):
        return
    low, high = float(np.min(rewards)), float(np.max(rewards))
    if low < 0 or high > 1 or not (np.isfinite(low) and np.isfinite(high)):
        raise TrainingError(f"step {step}: rewards range over [{low:g}, {high:g}], but {cfg.algorithm.name}'s prompt "
                            "critic (a binary cross-entropy on the reward) needs rewards in [0, 1]: use rewards "
                            "scored in [0, 1] with non-negative weights summing to at most 1")
