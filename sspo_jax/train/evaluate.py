"""Held-out evaluation: greedy accuracy and pass@k of a policy on a prompt set.

Accuracy is the mean of a correctness reward (score 1 = correct) over greedy responses; pass@k
samples k responses per problem at the training temperature and counts a problem solved when any
of them is correct.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from sspo_jax.data import DataConfig, PromptBatch, PromptBatcher, build_source
from sspo_jax.rewards import RewardConfig, RewardInput, get_reward
from sspo_jax.rollout import GenerationResult, SamplingConfig, generate
from sspo_jax.train import sample
from sspo_jax.train.score import correctness_scores


def eval_data_config(data: DataConfig, *, size: int, batch_size: int, path: str | None = None) -> DataConfig | None:
    """The held-out variant of a training `DataConfig` (None when there is nothing to evaluate on).

    Generated tasks draw their problems from a different generator seed; file sources need `path`.
    The variant yields each problem once, in order (one row per problem, no shuffle, one epoch,
    last batch kept).

    Args:
      data: the training data settings.
      size: number of problems (generated tasks).
      batch_size: prompts per batch (capped at `size`).
      path: the held-out file for ``jsonl``/``parquet`` sources.
    """
    common = dict(batch_size=min(batch_size, size), group_size=1, shuffle=False, num_epochs=1, drop_last=False)
    if data.source in ("arithmetic", "reasoning_gym"):
        return dataclasses.replace(data, size=size, generator_seed=data.generator_seed + 1_000_003, **common)
    if path:
        return dataclasses.replace(data, path=path, **common)
    return None


def eval_batches_for(cfg: Any, tokenizer: Any) -> list[PromptBatch]:
    """The held-out prompt batches of a `TrainConfig` (empty when evaluation is off or a file
    source has no ``eval.path``)."""
    if not cfg.eval.enabled:
        return []
    data = eval_data_config(cfg.data, size=cfg.eval.size, batch_size=cfg.eval.batch_size, path=cfg.eval.path)
    return build_eval_batches(data, tokenizer, cfg.eval.size) if data is not None else []


def build_eval_batches(data: DataConfig, tokenizer: Any, size: int) -> list[PromptBatch]:
    """About `size` problems of `data` as prompt batches (one response row per problem).

    Batches are taken until the source is exhausted or `size` problems are reached, so the last
    batch may overshoot `size`. Each batch's ``input_ids``/``attention_mask`` are [B, P].
    """
    batcher = PromptBatcher(build_source(data), tokenizer, data)
    batches, seen = [], 0
    while not batcher.exhausted and seen < size:
        batch = batcher.next_batch()
        batches.append(batch)
        seen += len(batch.golds)
    return batches


def correctness(reward_name: str, batch: PromptBatch, gen: GenerationResult, tokenizer: Any,
                rewards: RewardConfig) -> np.ndarray:
    """Scores of the correctness reward `reward_name` (score 1 = correct), float32 [N] (N = rows of
    `gen`, their prompts' golds and metas in `batch`); the reward's weight is replaced by 1."""
    roll = sample.rollout_from_generation(gen)
    inp = RewardInput(sample.decode_responses(tokenizer, roll), batch.golds, batch.metas, roll.lengths,
                      roll.truncated)
    return correctness_scores(reward_name, inp, rewards)


def evaluate_policy(model_like, tokenizer: Any, batches: list[PromptBatch], sampling: SamplingConfig,
                    rewards: RewardConfig, *, reward_name: str = "math", samples: int = 0,
                    seed: int = 0, max_new_tokens: int | None = None) -> dict[str, float]:
    """Greedy accuracy (and pass@`samples`) of a policy over `batches`.

    Args:
      model_like: a policy or its ``(graphdef, state)``.
      tokenizer: decodes the responses.
      batches: prompt batches, e.g. from `build_eval_batches`.
      sampling: the sampling settings; greedy decoding uses them with temperature 0
        (top-k and top-p off).
      rewards: reward settings (workers, timeouts, extraction) used to score correctness.
      reward_name: the registered correctness reward (score 1 = correct).
      samples: k, sampled responses per problem for pass@k; 0 = greedy only.
      seed: PRNG seed of the sampling.
      max_new_tokens: the response budget (None = ``sampling.max_new_tokens``).
    Returns:
      ``eval/accuracy`` (greedy), ``eval/response_length``, ``eval/truncated_frac`` (greedy
      responses cut at the budget), ``eval/problems``, and with samples
      ``eval/sampled_accuracy`` (mean over the k samples: pass@1 at the sampling temperature) and
      ``eval/pass@k``, as floats; empty when `batches` is.
    Raises:
      UnknownRewardError (a `ConfigError` and a `KeyError`): `reward_name` is not registered
        (before any generation).
    """
    get_reward(reward_name)  # a clear error for an unknown name before any generation
    if not batches:
        return {}
    if max_new_tokens is not None:
        sampling = sampling.replace(max_new_tokens=max_new_tokens)
    greedy = sampling.replace(temperature=0.0, top_k=0, top_p=1.0)
    key = jax.random.key(seed)
    correct, lengths, passk, truncated = [], [], [], []
    for i, batch in enumerate(batches):
        gen = generate(model_like, batch.input_ids, batch.attention_mask, greedy, key)
        correct.append(correctness(reward_name, batch, gen, tokenizer, rewards))
        lengths.append(np.asarray(gen.response_lengths))
        truncated.append(np.asarray(gen.truncated))
        if samples:
            gen = generate(model_like, batch.input_ids, batch.attention_mask, sampling, jax.random.fold_in(key, i),
                           group_size=samples)
            rep = dataclasses.replace(batch, golds=[g for g in batch.golds for _ in range(samples)],
                                      metas=[m for m in batch.metas for _ in range(samples)])
            scores = correctness(reward_name, rep, gen, tokenizer, rewards)
            passk.append(scores.reshape(-1, samples))
    out = {"eval/accuracy": float(np.mean(np.concatenate(correct))),
           "eval/response_length": float(np.mean(np.concatenate(lengths))),
           "eval/truncated_frac": float(np.mean(np.concatenate(truncated))),
           "eval/problems": float(sum(len(c) for c in correct))}
    if passk:
        sampled = np.concatenate(passk)  # [problems, k]
        out["eval/sampled_accuracy"] = float(sampled.mean())
        out[f"eval/pass@{samples}"] = float(sampled.max(axis=1).mean())
    return out
