"""PromptBatcher: group repetition, left padding, masks, buckets, templates, over-long prompts,
deterministic shuffling, epochs and cursor save/restore."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sspo_jax.data import (
    DataConfig,
    DataError,
    ListSource,
    PromptBatcher,
    PromptRecord,
    build_source,
)
from tests.data.data_tokenizers import bpe_tokenizer, hf_tokenizer

PLAIN = dict(template="plain", prompt_template="{prompt}\n", instruction="")


def small_source(n: int = 10) -> ListSource:
    return ListSource([PromptRecord(f"Compute {i}+{i}.", str(2 * i), {"i": i}) for i in range(n)])


def assert_batches_equal(a, b):
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(a.attention_mask, b.attention_mask)
    np.testing.assert_array_equal(a.record_indices, b.record_indices)
    assert a.golds == b.golds and a.metas == b.metas and a.prompts == b.prompts


def test_group_repetition_padding_and_masks():
    cfg = DataConfig(batch_size=3, group_size=4, pad_token_id=0, shuffle=False, max_prompt_len=64, **PLAIN)
    tok = bpe_tokenizer()
    batch = next(PromptBatcher(small_source(), tok, cfg))
    assert batch.input_ids.shape == (12, 16) and batch.input_ids.dtype == np.int32
    assert batch.attention_mask.dtype == np.int32
    assert batch.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert batch.golds == ["0"] * 4 + ["2"] * 4 + ["4"] * 4
    assert [m["i"] for m in batch.metas] == [0] * 4 + [1] * 4 + [2] * 4
    assert batch.num_prompts == 3 and batch.group_size == 4
    for row in range(12):
        ids = tok.encode(batch.prompts[row], add_special_tokens=False).ids
        mask = batch.attention_mask[row]
        n = int(mask.sum())
        assert n == len(ids)
        assert mask.tolist() == [0] * (16 - n) + [1] * n  # left padding
        assert batch.input_ids[row, 16 - n:].tolist() == ids
        assert (batch.input_ids[row, : 16 - n] == 0).all()


def test_bucketed_widths():
    long = ListSource([PromptRecord("Compute " + "+".join(["12"] * 20) + ".", "240")])
    cfg = DataConfig(batch_size=1, group_size=1, pad_token_id=0, max_prompt_len=100, **PLAIN)
    assert cfg.buckets == (16, 32, 64, 100)
    width = next(PromptBatcher(long, bpe_tokenizer(), cfg)).input_ids.shape[1]
    assert width in cfg.buckets and width > 16
    cfg = cfg.replace(bucket_lengths=(24, 48))
    assert cfg.buckets == (24, 48, 100)
    assert next(PromptBatcher(long, bpe_tokenizer(), cfg)).input_ids.shape[1] in (24, 48)


def test_overlong_prompts_truncate_reject_error():
    records = [PromptRecord("Compute 1+1.", "2"), PromptRecord("Compute " + "+".join(["7"] * 40) + ".", "280"),
               PromptRecord("Compute 2+2.", "4")]
    source = ListSource(records)
    tok = bpe_tokenizer()
    base = DataConfig(batch_size=2, group_size=2, pad_token_id=0, shuffle=False, max_prompt_len=16, **PLAIN)

    batcher = PromptBatcher(source, tok, base)
    batch = next(batcher)
    assert batch.truncated == 1 and batch.rejected == 0
    assert batch.attention_mask[2].sum() == 16
    full = tok.encode(batch.prompts[2], add_special_tokens=False).ids
    assert batch.input_ids[2].tolist() == full[-16:]  # keeps the end of the prompt
    assert batcher.state()["truncated"] == 1

    batcher = PromptBatcher(source, tok, base.replace(overlong_prompt="reject"))
    batch = next(batcher)
    assert batch.rejected == 1 and batch.golds == ["2", "2", "4", "4"]
    assert batcher.state()["rejected"] == 1

    batcher = PromptBatcher(source, tok, base.replace(overlong_prompt="error"))
    with pytest.raises(DataError, match="record 1: the prompt has .* tokens > data.max_prompt_len=16"):
        next(batcher)
    assert batcher.state()["position"] == 0  # a failed batch does not move the cursor

    only_long = ListSource([records[1]])
    with pytest.raises(DataError, match="every prompt is longer"):
        next(PromptBatcher(only_long, tok, base.replace(overlong_prompt="reject")))


def test_shuffle_is_deterministic_and_a_permutation_per_epoch():
    cfg = DataConfig(batch_size=5, group_size=1, pad_token_id=0, seed=7, num_epochs=3, **PLAIN)
    order = [int(i) for b in PromptBatcher(small_source(), bpe_tokenizer(), cfg) for i in b.record_indices]
    again = [int(i) for b in PromptBatcher(small_source(), bpe_tokenizer(), cfg) for i in b.record_indices]
    assert order == again and len(order) == 30
    epochs = [order[i:i + 10] for i in (0, 10, 20)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1]
    other = [int(i) for b in PromptBatcher(small_source(), bpe_tokenizer(), cfg.replace(seed=8))
             for i in b.record_indices]
    assert other != order
    unshuffled = [int(i) for b in PromptBatcher(small_source(), bpe_tokenizer(), cfg.replace(shuffle=False))
                  for i in b.record_indices]
    assert unshuffled == list(range(10)) * 3


def test_batches_cross_epoch_boundaries_and_drop_last():
    cfg = DataConfig(batch_size=4, group_size=1, pad_token_id=0, num_epochs=2, **PLAIN)
    batcher = PromptBatcher(small_source(), bpe_tokenizer(), cfg)
    batches = list(batcher)
    assert len(batches) == 5  # 20 records: 4+4+4(crossing)+4+4, nothing left over
    assert batcher.exhausted and batcher.state()["dropped"] == 0
    cfg = cfg.replace(batch_size=3)
    batcher = PromptBatcher(small_source(), bpe_tokenizer(), cfg)
    assert len(list(batcher)) == 6 and batcher.state()["dropped"] == 2
    batcher = PromptBatcher(small_source(), bpe_tokenizer(), cfg.replace(drop_last=False))
    sizes = [b.num_prompts for b in batcher]
    assert sizes == [3] * 6 + [2]


@pytest.mark.parametrize("skip", [0, 1, 3, 4, 7])
def test_cursor_save_restore_gives_the_same_next_batch(skip):
    cfg = DataConfig(batch_size=3, group_size=2, pad_token_id=0, seed=3, **PLAIN)  # 10 records: epochs cross
    source = build_source(DataConfig(size=10))
    first = PromptBatcher(source, bpe_tokenizer(), cfg)
    for _ in range(skip):
        next(first)
    saved = json.loads(json.dumps(first.state()))  # the cursor survives serialisation
    expected = [next(first) for _ in range(4)]
    resumed = PromptBatcher(source, bpe_tokenizer(), cfg)
    resumed.restore(saved)
    for want in expected:
        assert_batches_equal(next(resumed), want)
    assert resumed.state() == first.state()


def test_restore_rejects_a_foreign_cursor():
    cfg = DataConfig(batch_size=2, group_size=1, pad_token_id=0, **PLAIN)
    batcher = PromptBatcher(small_source(10), bpe_tokenizer(), cfg)
    state = batcher.state()
    with pytest.raises(DataError, match="same data and data.seed"):
        PromptBatcher(small_source(11), bpe_tokenizer(), cfg).restore(state)
    with pytest.raises(DataError, match="same data and data.seed"):
        PromptBatcher(small_source(10), bpe_tokenizer(), cfg.replace(seed=1)).restore(state)
    with pytest.raises(DataError, match="no 'position'"):
        batcher.restore({"epoch": 0})


def test_chat_template_and_plain_fallback():
    hf = hf_tokenizer(chat=True)
    cfg = DataConfig(batch_size=1, group_size=1, shuffle=False, system_prompt="Be brief.", max_prompt_len=128)
    batch = next(PromptBatcher(small_source(), hf, cfg))
    assert batch.prompts[0] == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCompute 0+0.\n"
                                "Please reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
                                "<|im_start|>assistant\n")
    assert batch.input_ids[0, -1] != hf.pad_token_id and (batch.attention_mask[0, -1] == 1)
    plain = next(PromptBatcher(small_source(), hf_tokenizer(chat=False), cfg))
    assert plain.prompts[0] == "Compute 0+0.\nPlease reason step by step, and put your final answer within \\boxed{}."
    with pytest.raises(DataError, match="no chat template"):
        PromptBatcher(small_source(), hf_tokenizer(chat=False), cfg.replace(template="chat"))
    forced_plain = next(PromptBatcher(small_source(), hf, cfg.replace(template="plain")))
    assert forced_plain.prompts[0] == plain.prompts[0]


def test_pad_id_resolution():
    cfg = DataConfig(batch_size=1, group_size=1, **PLAIN)
    assert PromptBatcher(small_source(), hf_tokenizer(), cfg).encoder.pad_id == 0  # "<pad>"
    with pytest.raises(DataError, match="data.pad_token_id"):
        PromptBatcher(small_source(), bpe_tokenizer(), cfg)
    assert PromptBatcher(small_source(), bpe_tokenizer(), cfg.replace(pad_token_id=3)).encoder.pad_id == 3


@pytest.mark.parametrize(
    "changes, key",
    [({"source": "csv"}, "data.source"), ({"batch_size": 0}, "data.batch_size"),
     ({"group_size": 1.5}, "data.group_size"),
     ({"overlong_prompt": "drop"}, "data.overlong_prompt"), ({"template": "chatml"}, "data.template"),
     ({"prompt_template": "no slot"}, "data.prompt_template"), ({"num_epochs": 0}, "data.num_epochs"),
     ({"bucket_lengths": (64, 32)}, "data.bucket_lengths"), ({"bucket_lengths": (512,)}, "data.bucket_lengths"),
     ({"answer_format": "latex"}, "data.answer_format"), ({"arithmetic": {"max_steps": 0}}, "data.arithmetic"),
     ({"pad_token_id": -1}, "data.pad_token_id")],
)
def test_data_config_errors_name_the_key(changes, key):
    with pytest.raises(DataError, match=key.replace(".", r"\.")):
        DataConfig(**changes)
