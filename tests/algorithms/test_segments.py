"""Subsentence segmentation: structural properties, length limits, decimals, a real BPE tokenizer."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sspo_jax.algorithms import SegmentationConfig, build_delimiter_table, segment_ids
from sspo_jax.algorithms.config import ConfigError
from sspo_jax.algorithms.segments import segment_stats, units_from_mask

from .batches import DECIMAL_SEP_IDS, DELIM_IDS, DIGIT_IDS, VOCAB, toy_table


@st.composite
def token_rows(draw, max_b=4, max_t=24):
    b = draw(st.integers(1, max_b))
    t = draw(st.integers(1, max_t))
    tokens = np.array(draw(st.lists(st.integers(0, VOCAB - 1), min_size=b * t, max_size=b * t))).reshape(b, t)
    mask = np.zeros((b, t), bool)
    for i in range(b):
        start = draw(st.integers(0, t))
        length = draw(st.integers(0, t - start))
        mask[i, start:start + length] = True
    return tokens.astype(np.int32), mask


def _segments_of(ids_row: np.ndarray) -> list[list[int]]:
    segs: dict[int, list[int]] = {}
    for pos, k in enumerate(ids_row):
        if k >= 0:
            segs.setdefault(int(k), []).append(pos)
    return [segs[k] for k in sorted(segs)]


@given(token_rows(), st.integers(1, 4), st.sampled_from([None, 8, 11]), st.booleans())
def test_structural_properties(rows, min_len, max_len, protect):
    tokens, mask = rows
    cfg = SegmentationConfig(min_segment_len=min_len, max_segment_len=max_len, protect_decimals=protect)
    ids = np.asarray(segment_ids(jnp.asarray(tokens), jnp.asarray(mask), toy_table(), cfg))
    assert ids.dtype == np.int32 and ids.shape == tokens.shape
    assert np.all(ids[~mask] == -1), "padding must get id -1"
    for b in range(tokens.shape[0]):
        valid_ids = ids[b][mask[b]]
        if valid_ids.size == 0:
            continue
        assert valid_ids[0] == 0
        steps = np.diff(valid_ids)
        assert np.all((steps == 0) | (steps == 1)), "ids are non-decreasing and consecutive"
        segs = _segments_of(ids[b])
        lengths = [len(s) for s in segs]
        if max_len is not None:
            assert max(lengths) <= max_len
        if sum(lengths) >= min_len:
            assert min(lengths) >= min_len, (lengths, min_len)


@given(token_rows())
def test_delimiter_ends_its_segment_without_length_limits(rows):
    tokens, mask = rows
    cfg = SegmentationConfig(protect_decimals=False)
    ids = np.asarray(segment_ids(jnp.asarray(tokens), jnp.asarray(mask), toy_table(), cfg))
    for b in range(tokens.shape[0]):
        for t in range(tokens.shape[1] - 1):
            if mask[b, t] and mask[b, t + 1]:
                is_delim = tokens[b, t] in DELIM_IDS
                assert (ids[b, t + 1] == ids[b, t] + 1) == is_delim


def test_decimal_protection_on_toy_vocab():
    d = {str(i): DIGIT_IDS[i] for i in range(10)}
    comma, dot = DELIM_IDS
    assert DECIMAL_SEP_IDS == (dot,)
    # "3 . 1 4 , 2 . x" where x is a non-digit token (id 13): the first dot is a decimal point.
    row = [d["3"], dot, d["1"], d["4"], comma, d["2"], dot, 13]
    tokens = jnp.asarray([row], jnp.int32)
    mask = jnp.ones_like(tokens, bool)
    on = np.asarray(segment_ids(tokens, mask, toy_table(), SegmentationConfig()))[0]
    off = np.asarray(segment_ids(tokens, mask, toy_table(), SegmentationConfig(protect_decimals=False)))[0]
    np.testing.assert_array_equal(on, [0, 0, 0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(off, [0, 0, 1, 1, 1, 2, 2, 3])


def test_decimal_at_response_edge_is_a_boundary():
    d = DIGIT_IDS
    _, dot = DELIM_IDS
    tokens = jnp.asarray([[d[3], dot, d[1], d[2]]], jnp.int32)
    mask = jnp.asarray([[False, True, True, True]])  # the digit before "." is prompt, not response
    ids = np.asarray(segment_ids(tokens, mask, toy_table(), SegmentationConfig()))[0]
    np.testing.assert_array_equal(ids, [-1, 0, 1, 1])


def test_min_and_max_segment_len_exact():
    comma = DELIM_IDS[0]
    x = 13
    # segments of lengths 1, 1, 5, 2 (delimiter last in each)
    row = [comma, comma, x, x, x, x, comma, x, comma]
    tokens = jnp.asarray([row], jnp.int32)
    mask = jnp.ones_like(tokens, bool)
    table = toy_table()
    base = np.asarray(segment_ids(tokens, mask, table, SegmentationConfig()))[0]
    np.testing.assert_array_equal(base, [0, 1, 2, 2, 2, 2, 2, 3, 3])
    # min 2: segment 1 (len 1) merges into segment 0; segment 0 becomes length 2.
    m2 = np.asarray(segment_ids(tokens, mask, table, SegmentationConfig(min_segment_len=2)))[0]
    np.testing.assert_array_equal(m2, [0, 0, 1, 1, 1, 1, 1, 2, 2])
    # min 3: segments 1 and 3 merge backwards; segment 0 (1+1=2 < 3) absorbs the next one.
    m3 = np.asarray(segment_ids(tokens, mask, table, SegmentationConfig(min_segment_len=3)))[0]
    np.testing.assert_array_equal(m3, [0, 0, 0, 0, 0, 0, 0, 0, 0])
    # max 2: the length-5 segment is split into 3 pieces: floor(j * 3 / 5) = 0 0 1 1 2.
    x2 = np.asarray(segment_ids(tokens, mask, table, SegmentationConfig(max_segment_len=2)))[0]
    np.testing.assert_array_equal(x2, [0, 1, 2, 2, 3, 3, 4, 5, 5])


def test_long_run_without_punctuation_is_one_segment_unless_split():
    tokens = jnp.full((1, 10), 13, jnp.int32)
    mask = jnp.ones((1, 10), bool)
    ids = np.asarray(segment_ids(tokens, mask, toy_table(), SegmentationConfig()))[0]
    assert set(ids) == {0}
    ids = np.asarray(segment_ids(tokens, mask, toy_table(), SegmentationConfig(max_segment_len=4)))[0]
    assert [int(np.sum(ids == k)) for k in range(ids.max() + 1)] == [4, 3, 3]


def test_granularity_limits():
    tokens = jnp.asarray([[1, 5, 6, 2, 7, 0]], jnp.int32)
    mask = jnp.asarray([[0, 1, 1, 1, 1, 0]], bool)
    tok = np.asarray(segment_ids(tokens, mask, toy_table(), SegmentationConfig(granularity="token")))[0]
    seq = np.asarray(segment_ids(tokens, mask, toy_table(), SegmentationConfig(granularity="sequence")))[0]
    np.testing.assert_array_equal(tok, [-1, 0, 1, 2, 3, -1])
    np.testing.assert_array_equal(seq, [-1, 0, 0, 0, 0, -1])
    np.testing.assert_array_equal(np.asarray(units_from_mask(mask, "token"))[0], tok)
    with pytest.raises(ValueError, match="needs segment_ids"):
        units_from_mask(mask, "subsentence")


def test_ids_outside_table_are_not_delimiters():
    tokens = jnp.asarray([[1, 999, 1]], jnp.int32)
    ids = np.asarray(segment_ids(tokens, jnp.ones_like(tokens, bool), toy_table(), SegmentationConfig()))[0]
    np.testing.assert_array_equal(ids, [0, 1, 1])


class TestJitAndVmap(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_same_with_and_without_jit(self):
        rng = np.random.default_rng(0)
        tokens = jnp.asarray(rng.integers(0, VOCAB, (3, 20)), jnp.int32)
        mask = jnp.asarray(rng.random((3, 20)) > 0.1)
        cfg = SegmentationConfig(min_segment_len=2, max_segment_len=6)
        fn = self.variant(lambda tk, m: segment_ids(tk, m, toy_table(), cfg))
        expected = segment_ids(tokens, mask, toy_table(), cfg)
        np.testing.assert_array_equal(fn(tokens, mask), expected)

    def test_vmap_over_rows(self):
        rng = np.random.default_rng(1)
        tokens = jnp.asarray(rng.integers(0, VOCAB, (4, 15)), jnp.int32)
        mask = jnp.asarray(rng.random((4, 15)) > 0.2)
        cfg = SegmentationConfig()
        per_row = jax.vmap(lambda tk, m: segment_ids(tk[None], m[None], toy_table(), cfg)[0])(tokens, mask)
        np.testing.assert_array_equal(per_row, segment_ids(tokens, mask, toy_table(), cfg))


def test_segment_stats():
    ids = jnp.asarray([[0, 0, 1, -1], [-1, -1, -1, -1], [0, 1, 2, 2]])
    mask = ids >= 0
    s = segment_stats(ids, mask)
    assert float(s["segments_per_response"]) == pytest.approx(2.5)
    assert float(s["mean_segment_length"]) == pytest.approx(7 / 5)


def test_config_validation():
    with pytest.raises(ConfigError, match="granularity"):
        SegmentationConfig(granularity="word")
    with pytest.raises(ConfigError, match="min_segment_len"):
        SegmentationConfig(min_segment_len=0)
    with pytest.raises(ConfigError, match="max_segment_len"):
        SegmentationConfig(min_segment_len=3, max_segment_len=4)


# --- a real BPE tokenizer -------------------------------------------------------------------

SOLUTION = "Let x = 3.14, so 2x = 6.28. Then the area is 12.56; the answer is 12.56!\nDone."


@pytest.fixture(scope="module")
def bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    # Qwen-style pre-tokenisation: digits split one by one, byte-level for everything else.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    corpus = [SOLUTION, "The value is 1.5, and 2.25 is more. So x = 4; y = 7.", "Then, we add: 3 + 4 = 7!"] * 20
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return tok


def test_real_bpe_tokenizer_math_solution(bpe_tokenizer):
    table = build_delimiter_table(bpe_tokenizer, SegmentationConfig())
    enc = bpe_tokenizer.encode(SOLUTION)
    tokens = jnp.asarray([enc.ids], jnp.int32)
    mask = jnp.ones_like(tokens, bool)
    ids = np.asarray(segment_ids(tokens, mask, table, SegmentationConfig()))[0]
    pieces = ["".join(bpe_tokenizer.decode([i]) for i, k in zip(enc.ids, ids) if k == s) for s in range(ids.max() + 1)]
    assert pieces == ["Let x = 3.14,", " so 2x = 6.28.", " Then the area is 12.56;", " the answer is 12.56!",
                      "\n", "Done."], pieces
    # Without protection the decimals are cut.
    off = np.asarray(segment_ids(tokens, mask, table, SegmentationConfig(protect_decimals=False)))[0]
    assert off.max() > ids.max()
    # Sentence-only delimiters: commas and semicolons no longer cut.
    sent = segment_ids(tokens, mask, build_delimiter_table(bpe_tokenizer, SegmentationConfig(sentence_only=True)),
                       SegmentationConfig(sentence_only=True))
    assert int(np.asarray(sent).max()) == 3  # "…6.28." "…12.56!" "\n" "Done."


def test_table_vocab_padding(bpe_tokenizer):
    n = bpe_tokenizer.get_vocab_size()
    table = build_delimiter_table(bpe_tokenizer, vocab_size=n + 7)
    assert table.vocab_size == n + 7 and not bool(jnp.any(table.is_delim[n:]))
    with pytest.raises(ValueError, match="does not fit the model"):
        build_delimiter_table(bpe_tokenizer, vocab_size=n - 1)
