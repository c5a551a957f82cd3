"""Subsentence segmentation of responses (ALGORITHMS.md 1a) [project choice].

Two steps:

1. Once per tokenizer, on the host: `build_delimiter_table` decodes every vocabulary id and
   records which tokens are delimiters (their text contains one of the configured characters),
   which are bare decimal separators (``.`` or ``,``) and which start or end with a digit.
2. Per rollout, on device and inside jit: `segment_ids` turns token rows and the response mask
   into per-token segment ids with cumulative sums of segment-start flags. A delimiter closes
   its segment; the next valid token opens a new one. Padding gets id -1.

Segment ids are local to each row (0, 1, 2, ...); `flat_segment_index` maps them to one index
space of static size ``B * T + 1`` for `jax.ops.segment_sum` (the extra slot collects padding).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

from sspo_jax.algorithms.config import SegmentationConfig

Array = jax.Array
_DIGITS = "0123456789"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DelimiterTable:
    """Per-vocabulary-id boolean tables, each of shape [V].

    Attributes:
      is_delim: the token's decoded text contains a delimiter character.
      is_decimal_sep: the token's text is exactly ``.`` or ``,`` (candidate decimal separator).
      ends_with_digit: the token's text ends with an ASCII digit.
      starts_with_digit: the token's text starts with an ASCII digit.
    """

    is_delim: Array
    is_decimal_sep: Array
    ends_with_digit: Array
    starts_with_digit: Array

    @property
    def vocab_size(self) -> int:
        """V, the number of ids the table covers."""
        return int(self.is_delim.shape[0])

    @classmethod
    def from_token_texts(cls, texts: list[str], cfg: SegmentationConfig,
                         special: frozenset[int] = frozenset()) -> "DelimiterTable":
        """Builds the table from the decoded text of each vocabulary id.

        Args:
          texts: V strings, ``texts[i]`` the decoded text of id i.
          cfg: uses ``cfg.active_delimiters``.
          special: ids that are never delimiters nor digits (special tokens such as EOS); empty
            texts are neither.
        Returns:
          A `DelimiterTable` of bool [V] arrays.
        """
        delims = set(cfg.active_delimiters)
        n = len(texts)
        is_delim = np.zeros(n, bool)
        is_sep = np.zeros(n, bool)
        ends = np.zeros(n, bool)
        starts = np.zeros(n, bool)
        for i, text in enumerate(texts):
            if i in special or not text:
                continue
            is_delim[i] = any(ch in delims for ch in text)
            is_sep[i] = text in (".", ",")
            ends[i] = text[-1] in _DIGITS
            starts[i] = text[0] in _DIGITS
        return cls(jnp.asarray(is_delim), jnp.asarray(is_sep), jnp.asarray(ends), jnp.asarray(starts))


def _tokenizer_texts(tokenizer: Any) -> tuple[list[str], frozenset[int]]:
    """Decoded text of every id of a Hugging Face tokenizer (transformers or `tokenizers`)."""
    if hasattr(tokenizer, "get_vocab_size"):  # tokenizers.Tokenizer
        n = tokenizer.get_vocab_size(with_added_tokens=True)
        special: frozenset[int] = frozenset()
        decode = lambda i: tokenizer.decode([i], skip_special_tokens=False)  # noqa: E731
    elif hasattr(tokenizer, "decode") and hasattr(tokenizer, "__len__"):  # transformers tokenizer
        n = len(tokenizer)
        special = frozenset(getattr(tokenizer, "all_special_ids", []) or [])
        decode = lambda i: tokenizer.decode([i], skip_special_tokens=False,  # noqa: E731
                                            clean_up_tokenization_spaces=False)
    else:
        raise TypeError(
            f"build_delimiter_table needs a Hugging Face tokenizer (transformers or tokenizers), got {type(tokenizer).__name__}")
    return [decode(i) for i in range(n)], special


def build_delimiter_table(tokenizer: Any, cfg: SegmentationConfig = SegmentationConfig(),
                          vocab_size: int | None = None) -> DelimiterTable:
    """Builds the `DelimiterTable` of a Hugging Face tokenizer by decoding each id once.

    Args:
      tokenizer: a `transformers` tokenizer or a `tokenizers.Tokenizer`.
      cfg: segmentation settings (delimiter characters, sentence-only set).
      vocab_size: the model's vocabulary size when it is larger than the tokenizer's (Qwen pads
        its embedding matrix); extra ids are never delimiters. Must not be smaller.
    Returns:
      A `DelimiterTable` of shape [vocab_size or len(tokenizer)]; special tokens are never
      delimiters.
    Raises:
      TypeError: `tokenizer` is not a Hugging Face tokenizer.
      ValueError: `vocab_size` is smaller than the tokenizer's number of ids.
    """
    texts, special = _tokenizer_texts(tokenizer)
    if vocab_size is not None:
        if vocab_size < len(texts):
            raise ValueError(
                f"vocab_size={vocab_size} is smaller than the tokenizer's {len(texts)} ids: the tokenizer "
                "does not fit the model; use the tokenizer that belongs to the checkpoint")
        texts = texts + [""] * (vocab_size - len(texts))
    return DelimiterTable.from_token_texts(texts, cfg, special)


def _lookup(table: Array, tokens: Array) -> Array:
    """table[tokens] with ids outside the table reading as False."""
    return jnp.take(table, tokens, mode="fill", fill_value=False)


def _shift_right(x: Array, fill) -> Array:
    """x[:, t-1] at position t (fill at t = 0)."""
    return jnp.concatenate([jnp.full_like(x[:, :1], fill), x[:, :-1]], axis=1)


def _shift_left(x: Array, fill) -> Array:
    """x[:, t+1] at position t (fill at t = T-1)."""
    return jnp.concatenate([x[:, 1:], jnp.full_like(x[:, :1], fill)], axis=1)


def _ids_from_starts(start: Array, valid: Array) -> Array:
    ids = jnp.cumsum(start.astype(jnp.int32), axis=1) - 1
    return jnp.where(valid, ids, -1)


def _segment_lengths_per_token(ids: Array, valid: Array) -> Array:
    """For each token, the number of valid tokens in its segment (0 on padding)."""
    flat, n = flat_segment_index(ids)
    counts = jax.ops.segment_sum(valid.astype(jnp.int32).ravel(), flat.ravel(), num_segments=n)
    return jnp.where(valid, counts[flat], 0)


def _apply_min_length(start: Array, valid: Array, min_len: int) -> Array:
    """Merges segments shorter than `min_len` into the previous one (the first into the next)."""
    ids = _ids_from_starts(start, valid)
    length = _segment_lengths_per_token(ids, valid)
    start = start & ~((ids > 0) & (length < min_len))
    ids = _ids_from_starts(start, valid)
    first_len = jnp.sum((ids == 0) & valid, axis=1, keepdims=True)
    return start & ~((ids == 1) & (first_len < min_len))


def _apply_max_length(start: Array, valid: Array, max_len: int) -> Array:
    """Splits each segment of n > max_len tokens into ceil(n / max_len) near-equal pieces."""
    ids = _ids_from_starts(start, valid)
    n = _segment_lengths_per_token(ids, valid)
    ordinal = jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1
    seg_first = jax.lax.cummax(jnp.where(start, ordinal, -1), axis=1)
    j = ordinal - seg_first
    pieces = (n + max_len - 1) // max_len
    safe_n = jnp.maximum(n, 1)
    split = valid & (j > 0) & ((j * pieces) // safe_n != ((j - 1) * pieces) // safe_n)
    return start | split


def segment_ids(tokens: Array, response_mask: Array, table: Union[DelimiterTable, Array],
                cfg: SegmentationConfig = SegmentationConfig()) -> Array:
    """Per-token subsentence ids of each response row; jit- and vmap-safe [project choice].

    A segment starts at a valid token that follows a delimiter (not a protected decimal
    separator) or a masked position, so a delimiter is the last token of its segment, and
    ``seg_id = cumsum(starts) - 1`` per row; then segments shorter than ``cfg.min_segment_len``
    are merged and those longer than ``cfg.max_segment_len`` split. ``granularity="token"``
    gives ids 0, 1, 2, ... per valid token; ``"sequence"`` gives 0 on every valid token (the
    table is then unused).

    Args:
      tokens: int [B, T] token ids (prompt and response positions alike); ids outside the table
        are no delimiters.
      response_mask: bool or 0/1 [B, T], 1 on trained response tokens (EOS included).
      table: a `DelimiterTable`, or a bool [V] delimiter array (then no decimal protection).
      cfg: granularity, decimal protection and segment length limits (static).
    Returns:
      int32 [B, T]: 0, 1, 2, ... per row, non-decreasing over the row's valid tokens; -1 where
      `response_mask` is 0.
    """
    valid = response_mask.astype(bool)
    if cfg.granularity == "token":
        return _ids_from_starts(valid, valid).astype(jnp.int32)
    if cfg.granularity == "sequence":
        return jnp.where(valid, 0, -1).astype(jnp.int32)

    if isinstance(table, DelimiterTable):
        delim = _lookup(table.is_delim, tokens) & valid
        if cfg.protect_decimals:
            prev_ok = _shift_right(valid, False) & _lookup(table.ends_with_digit, _shift_right(tokens, 0))
            next_ok = _shift_left(valid, False) & _lookup(table.starts_with_digit, _shift_left(tokens, 0))
            delim = delim & ~(_lookup(table.is_decimal_sep, tokens) & prev_ok & next_ok)
    else:
        delim = _lookup(jnp.asarray(table, bool), tokens) & valid

    start = valid & (~_shift_right(valid, False) | _shift_right(delim, False))
    if cfg.min_segment_len > 1:
        start = _apply_min_length(start, valid, cfg.min_segment_len)
    if cfg.max_segment_len is not None:
        start = _apply_max_length(start, valid, cfg.max_segment_len)
    return _ids_from_starts(start, valid).astype(jnp.int32)


def units_from_mask(response_mask: Array, granularity: str) -> Array:
    """Segment ids for the two tokenizer-free granularities, ``token`` and ``sequence``.

    Args:
      response_mask: bool or 0/1 [B, T].
      granularity: ``token`` (ids 0, 1, 2, ... per valid token: GRPO) or ``sequence`` (0 on
        every valid token: GSPO).
    Returns:
      int32 [B, T] ids, -1 where `response_mask` is 0.
    Raises:
      ValueError: `granularity` is ``subsentence`` (or unknown); that one needs tokens.
    """
    if granularity not in ("token", "sequence"):
        raise ValueError(
            f"granularity={granularity!r} needs segment_ids computed from tokens with segment_ids(); "
            "only 'token' and 'sequence' can be derived from the mask alone")
    return segment_ids(jnp.zeros(response_mask.shape, jnp.int32), response_mask,
                       jnp.zeros((1,), bool), SegmentationConfig(granularity=granularity))


def flat_segment_index(seg_ids: Array) -> tuple[Array, int]:
    """Maps row-local ids [B, T] to one index space for `jax.ops.segment_sum`.

    Args:
      seg_ids: int [B, T] row-local ids, negative on padding.
    Returns:
      ``(flat, num_segments)``: int32 [B, T] ``flat = b * T + id`` for valid tokens and ``B * T``
      (a dump slot) for padding; ``num_segments = B * T + 1``, a static Python int.
    """
    b, t = seg_ids.shape
    row = jnp.arange(b, dtype=jnp.int32)[:, None] * t
    flat = jnp.where(seg_ids >= 0, row + seg_ids, b * t)
    return flat.astype(jnp.int32), b * t + 1


def segment_stats(seg_ids: Array, response_mask: Array) -> dict[str, Array]:
    """Segments per non-empty response and mean segment length in tokens.

    Args:
      seg_ids: int [B, T] ids from `segment_ids` (-1 on padding).
      response_mask: bool or 0/1 [B, T].
    Returns:
      ``{"segments_per_response", "mean_segment_length"}``, float32 [] each (0 for an empty
      batch).
    """
    valid = response_mask.astype(bool)
    n_segments = jnp.max(seg_ids, axis=1) + 1  # [B], 0 for empty rows
    rows = jnp.sum(n_segments > 0)
    total_segments = jnp.sum(n_segments)
    return {
        "segments_per_response": (total_segments / jnp.maximum(rows, 1)).astype(jnp.float32),
        "mean_segment_length": (jnp.sum(valid) / jnp.maximum(total_segments, 1)).astype(jnp.float32),
    }
