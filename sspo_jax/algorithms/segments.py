"""Subsentence segmentation of responses (ALGORITHMS.md 1a) [project choice].

Two steps:

1. Once per tokenizer, on the host: `build_delimiter_table` (`delimiters.py`) decodes every
   vocabulary id and records per id which tokens are delimiters (their text contains one of the configured
   characters, by default only at a word boundary: not ``.get`` or ``.com``), which are bare
   decimal separators (``.`` or ``,``), which start or end with a digit, which are special (EOS),
   and the text features of the optional rules (list markers, abbreviations, inline math).
2. Per rollout, on device and inside jit: `segment_ids` turns token rows and the response mask
   into per-token segment ids with cumulative sums of segment-start flags. A delimiter closes
   its segment; the next valid token opens a new one, unless it is a special token (EOS joins
   the last segment). Rules that need state across tokens (a list marker's line start, the
   inside of ``$...$``) are cumulative sums and maxima over the row. Padding gets id -1.

Segment ids are local to each row (0, 1, 2, ...); `flat_segment_index` maps them to one index
space of static size ``B * T + 1`` for `jax.ops.segment_sum` (the extra slot collects padding).
"""

from __future__ import annotations

from typing import Union

import jax
import jax.numpy as jnp

from sspo_jax.algorithms.config import SegmentationConfig
from sspo_jax.algorithms.delimiters import DelimiterTable, build_delimiter_table

__all__ = ["DelimiterTable", "build_delimiter_table", "flat_segment_index", "segment_ids", "segment_stats",
           "units_from_mask"]

Array = jax.Array


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


def _need(table: DelimiterTable, names: tuple[str, ...], rule: str) -> tuple[Array, ...]:
    missing = [n for n in names if getattr(table, n) is None]
    if missing:
        raise ValueError(
            f"segmentation.{rule} needs the table's text features {missing}; this DelimiterTable has only the "
            "four basic arrays: build it with build_delimiter_table(tokenizer, cfg) or DelimiterTable.from_token_texts")
    return tuple(getattr(table, n) for n in names)


def _gather_row(x: Array, idx: Array) -> Array:
    """x[b, idx[b, t]] for int idx in [0, T)."""
    return jnp.take_along_axis(x, jnp.clip(idx, 0, x.shape[1] - 1), axis=1)


def _list_markers(tokens: Array, valid: Array, table: DelimiterTable) -> Array:
    """A bare ``.``/``)`` right after a digit token, where the run of digit and blank tokens
    before it starts a line (or the response), and before a token that starts with a space: the
    ``1.`` of a numbered list (``\\n  12. Item``)."""
    digits, blank, punct, line_start, space = _need(
        table, ("is_digits", "is_blank", "is_marker_punct", "is_line_start", "starts_with_space"),
        "protect_list_markers")
    t = tokens.shape[1]
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), tokens.shape)
    is_digit = _lookup(digits, tokens) & valid
    in_run = is_digit | (_lookup(blank, tokens) & valid)
    last_non_run = jax.lax.cummax(jnp.where(in_run, -1, pos), axis=1)  # at t: last p <= t outside a run
    before_run = _shift_right(last_non_run, -1)  # the token before the run that ends at t - 1
    opener_ok = (before_run < 0) | ~_gather_row(valid, before_run) \
        | _gather_row(_lookup(line_start, tokens), before_run)
    next_space = _shift_left(valid, False) & _lookup(space, _shift_left(tokens, 0))
    return _lookup(punct, tokens) & valid & _shift_right(is_digit, False) & opener_ok & next_space


def _abbreviation_ends(tokens: Array, valid: Array, table: DelimiterTable) -> Array:
    """A bare ``.`` right after the last piece of a configured abbreviation (``e`` ``.g`` ``.``)."""
    period, stem = _need(table, ("is_period", "is_abbrev_stem"), "abbreviations")
    prev_stem = _shift_right(valid, False) & _lookup(stem, _shift_right(tokens, 0))
    return _lookup(period, tokens) & valid & prev_stem


def _inside_math(tokens: Array, valid: Array, table: DelimiterTable) -> Array:
    """Tokens at which inline math is open both before and after: the parity of ``$`` runs, or a
    positive depth of ``\\(`` minus ``\\)`` (also split as ``\\`` + ``(...``), counted from the
    last newline token or masked position (which reset the state to closed)."""
    nl, dollar, opens, closes, bs, lpar, rpar = _need(
        table, ("has_newline", "dollar_toggle", "math_opens", "math_closes", "ends_with_backslash",
                "starts_with_lparen", "starts_with_rparen"), "protect_math")
    t = tokens.shape[1]
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), tokens.shape)
    reset = ~valid | _lookup(nl, tokens)
    live = ~reset
    prev_bs = _shift_right(valid, False) & _lookup(bs, _shift_right(tokens, 0))
    n_dollar = jnp.where(live & _lookup(dollar, tokens), 1, 0)
    depth_step = jnp.where(live, jnp.take(opens, tokens, mode="fill", fill_value=0).astype(jnp.int32)
                           + (prev_bs & _lookup(lpar, tokens)).astype(jnp.int32)
                           - jnp.take(closes, tokens, mode="fill", fill_value=0).astype(jnp.int32)
                           - (prev_bs & _lookup(rpar, tokens)).astype(jnp.int32), 0)
    last_reset = jax.lax.cummax(jnp.where(reset, pos, -1), axis=1)

    def since_reset(x):  # sum of x over (last reset, t]; a reset position itself contributes 0
        c = jnp.cumsum(x, axis=1)
        return c - jnp.where(last_reset >= 0, _gather_row(c, last_reset), 0)

    open_after = (since_reset(n_dollar) % 2 == 1) | (since_reset(depth_step) > 0)
    return valid & open_after & _shift_right(open_after, False)


def segment_ids(tokens: Array, response_mask: Array, table: Union[DelimiterTable, Array],
                cfg: SegmentationConfig = SegmentationConfig()) -> Array:
    """Per-token subsentence ids of each response row; jit- and vmap-safe [project choice].

    A delimiter token (``table.is_delim``) is a boundary unless a protection rule of `cfg`
    applies: a decimal separator between digits (``protect_decimals``), a list marker
    (``protect_list_markers``), the end of an abbreviation (``abbreviations``) or a position
    inside inline math (``protect_math``). A segment starts at a valid token that follows a
    boundary or a masked position, except that a special token (EOS) following a valid token
    never starts one (``eos_joins_last``); so a delimiter is the last token of its segment, and
    ``seg_id = cumsum(starts) - 1`` per row. Then segments shorter than ``cfg.min_segment_len``
    are merged and those longer than ``cfg.max_segment_len`` split. ``granularity="token"``
    gives ids 0, 1, 2, ... per valid token; ``"sequence"`` gives 0 on every valid token (the
    table is then unused).

    Args:
      tokens: int [B, T] token ids (prompt and response positions alike); ids outside the table
        are no delimiters.
      response_mask: bool or 0/1 [B, T], 1 on trained response tokens (EOS included).
      table: a `DelimiterTable` (built with the same `cfg`), or a bool [V] delimiter array (then
        no decimal protection and no special tokens).
      cfg: granularity, protection rules and segment length limits (static).
    Returns:
      int32 [B, T]: 0, 1, 2, ... per row, non-decreasing over the row's valid tokens; -1 where
      `response_mask` is 0.
    Raises:
      ValueError: a rule of `cfg` needs text features that `table` lacks.
    """
    valid = response_mask.astype(bool)
    if cfg.granularity == "token":
        return _ids_from_starts(valid, valid).astype(jnp.int32)
    if cfg.granularity == "sequence":
        return jnp.where(valid, 0, -1).astype(jnp.int32)

    special = None
    if isinstance(table, DelimiterTable):
        delim = _lookup(table.is_delim, tokens) & valid
        if cfg.protect_decimals:
            prev_ok = _shift_right(valid, False) & _lookup(table.ends_with_digit, _shift_right(tokens, 0))
            next_ok = _shift_left(valid, False) & _lookup(table.starts_with_digit, _shift_left(tokens, 0))
            delim = delim & ~(_lookup(table.is_decimal_sep, tokens) & prev_ok & next_ok)
        if cfg.protect_list_markers:
            delim = delim & ~_list_markers(tokens, valid, table)
        if cfg.abbreviations:
            delim = delim & ~_abbreviation_ends(tokens, valid, table)
        if cfg.protect_math:
            delim = delim & ~_inside_math(tokens, valid, table)
        if table.is_special is not None:
            special = _lookup(table.is_special, tokens) & valid
    else:
        delim = _lookup(jnp.asarray(table, bool), tokens) & valid

    prev_valid = _shift_right(valid, False)
    start = valid & (~prev_valid | _shift_right(delim, False))
    if cfg.eos_joins_last and special is not None:
        start = start & ~(special & prev_valid)
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
