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
from sspo_jax.rewards import RewardConfig, compute_rewards, get_reward
from sspo_jax.rollout import GenerationResult, SamplingConfig, generate


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


def decode_responses(tokenizer: Any, gen: GenerationResult) -> list[str]:
    """Response texts of a generation result (tokens [B, P + N]), one per row.

    Each row's first ``response_lengths[b]`` response tokens are decoded with special tokens
    skipped (so the stop token is dropped); padding after them is excluded.
    """
    tokens = np.asarray(gen.tokens)
    lengths = np.asarray(gen.response_lengths)
    p = gen.prompt_len
    return [tokenizer.decode(tokens[i, p:p + lengths[i]].tolist(), skip_special_tokens=True)
            for i in range(tokens.shape[0])]


def correctness(reward_name: str, texts: list[str], batch: PromptBatch, gen: GenerationResult,
                rewards: RewardConfig) -> np.ndarray:
    """Scores of the correctness reward `reward_name`, float32 [N] (N = rows of `gen`).

    Args:
      reward_name: a registered reward (score 1 = correct).
      texts: N decoded responses; batch: their prompts (golds and metas, one per row).
      gen: the generation (response lengths and truncation flags for the reward).
      rewards: reward settings; their weights are replaced by ``{reward_name: 1}``.
    """
    out = compute_rewards(texts, batch.golds, dataclasses.replace(rewards, weights=((reward_name, 1.0),)),
                          metas=batch.metas, response_lengths=np.asarray(gen.response_lengths),
                          truncated=np.asarray(gen.truncated))
    return out.per_function[reward_name].scores


def evaluate_policy(model_like, tokenizer: Any, batches: list[PromptBatch], sampling: SamplingConfig,
                    rewards: RewardConfig, *, reward_name: str = "math", samples: int = 0,
                    seed: int = 0) -> dict[str, float]:
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
    Returns:
      ``eval/accuracy`` (greedy), ``eval/response_length``, ``eval/problems``, and with samples
      ``eval/sampled_accuracy`` (mean over the k samples: pass@1 at the sampling temperature) and
      ``eval/pass@k``, as floats; empty when `batches` is.
    Raises:
      KeyError: `reward_name` is not registered (before any generation).
    """
    get_reward(reward_name)  # a clear error for an unknown name before any generation
    if not batches:
        return {}
    greedy = sampling.replace(temperature=0.0, top_k=0, top_p=1.0)
    key = jax.random.key(seed)
    correct, lengths, passk = [], [], []
    for i, batch in enumerate(batches):
        gen = generate(model_like, batch.input_ids, batch.attention_mask, greedy, key)
        correct.append(correctness(reward_name, decode_responses(tokenizer, gen), batch, gen, rewards))
        lengths.append(np.asarray(gen.response_lengths))
        if samples:
            gen = generate(model_like, batch.input_ids, batch.attention_mask, sampling, jax.random.fold_in(key, i),
                           group_size=samples)
            rep = dataclasses.replace(batch, golds=[g for g in batch.golds for _ in range(samples)],
                                      metas=[m for m in batch.metas for _ in range(samples)])
            scores = correctness(reward_name, decode_responses(tokenizer, gen), rep, gen, rewards)
            passk.append(scores.reshape(-1, samples))
    out = {"eval/accuracy": float(np.mean(np.concatenate(correct))),
           "eval/response_length": float(np.mean(np.concatenate(lengths))),
           "eval/problems": float(sum(len(c) for c in correct))}
    if passk:
        sampled = np.concatenate(passk)  # [problems, k]
        out["eval/sampled_accuracy"] = float(sampled.mean())
        out[f"eval/pass@{samples}"] = float(sampled.max(axis=1).mean())
    return out
