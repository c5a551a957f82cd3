"""reasoning-gym sources: deterministic records that carry what the task's scorer needs."""

from __future__ import annotations

import pytest

pytest.importorskip("reasoning_gym")

from sspo_jax.data import DataConfig, DataError, PromptBatcher, ReasoningGymSource, build_source  # noqa: E402
from tests.data.data_tokenizers import hf_tokenizer  # noqa: E402


def test_source_records_are_deterministic():
    a = ReasoningGymSource("chain_sum", size=5, seed=2)
    b = build_source(DataConfig(source="reasoning_gym", reasoning_gym_task="chain_sum", size=5, generator_seed=2))
    assert [a[i].prompt for i in range(5)] == [b[i].prompt for i in range(5)]
    record = a[3]
    assert record.answer and record.meta["reasoning_gym_task"] == "chain_sum"
    assert record.meta["reasoning_gym_entry"]["question"] == record.prompt


def test_options_and_batching():
    cfg = DataConfig(source="reasoning_gym", reasoning_gym_task="basic_arithmetic", size=8,
                     reasoning_gym_options={"min_terms": 2, "max_terms": 2}, batch_size=4, group_size=2,
                     max_prompt_len=512)
    batch = next(PromptBatcher(build_source(cfg), hf_tokenizer(), cfg))
    assert batch.input_ids.shape[0] == 8 and len(batch.metas) == 8
    assert batch.metas[0] is batch.metas[1]


def test_unknown_task_and_bad_options():
    with pytest.raises(DataError, match="not a reasoning-gym task; known tasks: .*basic_arithmetic"):
        ReasoningGymSource("no_such_task")
    with pytest.raises(DataError, match="rejected data.reasoning_gym_options"):
        ReasoningGymSource("basic_arithmetic", options={"no_such_knob": 1})
