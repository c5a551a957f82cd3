"""Prompt data: sources (JSONL, Parquet, reasoning-gym, the built-in arithmetic task), prompt
templates, tokenization to left-padded batches repeated per group, resumable cursors.

Entry points::

    cfg = sspo_jax.data.DataConfig(source="jsonl", path="gsm8k.jsonl", prompt_field="question",
                                   answer_format="gsm8k", batch_size=16, group_size=8)
    batcher = sspo_jax.data.PromptBatcher(sspo_jax.data.build_source(cfg), tokenizer, cfg)
    batch = next(batcher)            # input_ids / attention_mask int32 [B*G, P], golds, metas
    cursor = batcher.state()         # save with the checkpoint; batcher.restore(cursor) resumes

This package imports no JAX.
"""

from __future__ import annotations

from sspo_jax.data.arithmetic import ArithmeticConfig, ArithmeticSource, problem, problems
from sspo_jax.data.batcher import PromptBatch, PromptBatcher
from sspo_jax.data.config import QWEN_MATH_INSTRUCTION, DataConfig
from sspo_jax.data.files import JsonlSource, ParquetSource
from sspo_jax.data.gym_source import ReasoningGymSource
from sspo_jax.data.prompts import PromptEncoder, fill_template
from sspo_jax.data.records import DataError, ListSource, PromptRecord, PromptSource


def build_source(cfg: DataConfig) -> PromptSource:
    """The `PromptSource` that ``cfg.source`` names, built from the other fields.

    Raises:
      DataError: the file or the generated task cannot be read or built (see each source).
      ImportError: the source needs the ``data`` extra (Parquet, reasoning-gym).
    """
    if cfg.source == "arithmetic":
        return ArithmeticSource(cfg.size, cfg.generator_seed, cfg.arithmetic)
    if cfg.source == "jsonl":
        return JsonlSource(cfg.path, cfg.prompt_field, cfg.answer_field, cfg.answer_format, cfg.meta_fields)
    if cfg.source == "parquet":
        return ParquetSource(cfg.path, cfg.prompt_field, cfg.answer_field, cfg.answer_format, cfg.meta_fields)
    return ReasoningGymSource(cfg.reasoning_gym_task, cfg.size, cfg.generator_seed, dict(cfg.reasoning_gym_options))


__all__ = [
    "QWEN_MATH_INSTRUCTION", "ArithmeticConfig", "ArithmeticSource", "DataConfig", "DataError", "JsonlSource",
    "ListSource", "ParquetSource", "PromptBatch", "PromptBatcher", "PromptEncoder", "PromptRecord",
    "PromptSource", "ReasoningGymSource", "build_source", "fill_template", "problem", "problems",
]
