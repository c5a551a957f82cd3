"""The delimiter table of subsentence segmentation (ALGORITHMS.md 1a) [project choice]: built once
per tokenizer, on the host, by decoding every vocabulary id.

Per id it records which tokens are delimiters (their text contains one of the configured
characters, by default only at a word boundary: not ``.get`` or ``.com``), which are bare decimal
separators (``.`` or ``,``), which start or end with a digit, which are special (EOS), and the text
features of the optional rules (list markers, abbreviations, inline math). `segments.segment_ids`
reads it on device.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sspo_jax.algorithms.config import SegmentationConfig

Array = jax.Array
_DIGITS = "0123456789"
_WORD_CHAR = re.compile(r"[A-Za-z0-9_]")
_DOLLAR_RUN = re.compile(r"\$+")
_OPEN_BRACKETS = " \t([{"

# Text features of the optional rules: name -> what the bool (or int8 count) [V] array holds.
_TEXT_FEATURES = {
    "is_special": "special token (EOS, chat markers)",
    "is_digits": "text is one or more ASCII digits",
    "is_blank": "text is one or more spaces or tabs",
    "is_marker_punct": "text is exactly '.' or ')'",
    "is_line_start": "text, without trailing spaces or tabs, ends with a newline",
    "starts_with_space": "text starts with a space or tab",
    "is_period": "text is exactly '.'",
    "is_abbrev_stem": "text (without leading spaces or brackets) is the last piece of an abbreviation",
    "has_newline": "text contains a newline",
    "dollar_toggle": "text has an odd number of runs of '$'",
    "math_opens": "int8 number of '\\(' in the text",
    "math_closes": "int8 number of '\\)' in the text",
    "ends_with_backslash": "text ends with a backslash",
    "starts_with_lparen": "text starts with '('",
    "starts_with_rparen": "text starts with ')'",
}


def _is_delimiter(text: str, delims: set[str], word_boundary: bool) -> bool:
    """Whether `text` contains a delimiter character (followed by no word character when
    `word_boundary`: ``.get``, ``.com``, ``,b`` are identifier or URL pieces, no delimiters)."""
    for j, ch in enumerate(text):
        if ch in delims and not (word_boundary and j + 1 < len(text) and _WORD_CHAR.match(text[j + 1])):
            return True
    return False


def _abbreviation_stems(abbreviations: tuple[str, ...]) -> set[str]:
    """Lower-case texts of a token that may stand right before an abbreviation's final ``.``:
    each suffix of the abbreviation (without that ``.``) that starts at one of its inner dots
    (``.g`` of ``e.g``) and the whole abbreviation (``vs``, ``e.g``)."""
    stems: set[str] = set()
    for abbr in abbreviations:
        body = abbr[:-1].lower()
        stems.add(body)
        stems.update(body[j:] for j, ch in enumerate(body) if ch == "." and j + 1 < len(body))
    return stems


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DelimiterTable:
    """Per-vocabulary-id tables, each of shape [V] (bool unless noted).

    The first four are always present; the text features of the issue-20 rules (special
    tokens, list markers, abbreviations, inline math) are None in a table built by hand from the
    four arrays, and `segment_ids` then refuses the rules that need them (a missing
    ``is_special`` means no token is special).

    Attributes:
      is_delim: the token's decoded text contains a delimiter character (at a word boundary with
        ``word_boundary``).
      is_decimal_sep: the token's text is exactly ``.`` or ``,`` (candidate decimal separator).
      ends_with_digit: the token's text ends with an ASCII digit.
      starts_with_digit: the token's text starts with an ASCII digit.
      is_special: special token (EOS, chat markers); never a delimiter nor a digit.
      is_digits: the text is one or more ASCII digits.
      is_blank: the text is one or more spaces or tabs (indentation before a list number).
      is_marker_punct: the text is exactly ``.`` or ``)``.
      is_line_start: the text, without trailing spaces or tabs, ends with a newline.
      starts_with_space: the text starts with a space or a tab.
      is_period: the text is exactly ``.``.
      is_abbrev_stem: the text, without leading spaces or opening brackets and lower-cased, is
        the last piece of one of the configured abbreviations (``.g`` of ``e.g.``, ``vs``).
      has_newline: the text contains a newline.
      dollar_toggle: the text has an odd number of maximal runs of ``$`` (``$$`` is one run).
      math_opens: int8, occurrences of ``\\(`` in the text.
      math_closes: int8, occurrences of ``\\)`` in the text.
      ends_with_backslash: the text ends with a backslash.
      starts_with_lparen: the text starts with ``(``.
      starts_with_rparen: the text starts with ``)``.
    """

    is_delim: Array
    is_decimal_sep: Array
    ends_with_digit: Array
    starts_with_digit: Array
    is_special: Optional[Array] = None
    is_digits: Optional[Array] = None
    is_blank: Optional[Array] = None
    is_marker_punct: Optional[Array] = None
    is_line_start: Optional[Array] = None
    starts_with_space: Optional[Array] = None
    is_period: Optional[Array] = None
    is_abbrev_stem: Optional[Array] = None
    has_newline: Optional[Array] = None
    dollar_toggle: Optional[Array] = None
    math_opens: Optional[Array] = None
    math_closes: Optional[Array] = None
    ends_with_backslash: Optional[Array] = None
    starts_with_lparen: Optional[Array] = None
    starts_with_rparen: Optional[Array] = None

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
          cfg: uses ``cfg.active_delimiters``, ``cfg.word_boundary`` and ``cfg.abbreviations``.
          special: ids that are special tokens (such as EOS): never delimiters nor digits;
            empty texts are neither.
        Returns:
          A `DelimiterTable` of bool (and int8) [V] arrays with every text feature.
        """
        delims = set(cfg.active_delimiters)
        stems = _abbreviation_stems(cfg.abbreviations)
        n = len(texts)
        f = {name: np.zeros(n, np.int8 if name in ("math_opens", "math_closes") else bool)
             for name in ("is_delim", "is_decimal_sep", "ends_with_digit", "starts_with_digit", *_TEXT_FEATURES)}
        for i, text in enumerate(texts):
            if i in special:
                f["is_special"][i] = True
                continue
            if not text:
                continue
            f["is_delim"][i] = _is_delimiter(text, delims, cfg.word_boundary)
            f["is_decimal_sep"][i] = text in (".", ",")
            f["ends_with_digit"][i] = text[-1] in _DIGITS
            f["starts_with_digit"][i] = text[0] in _DIGITS
            f["is_digits"][i] = all(ch in _DIGITS for ch in text)
            f["is_blank"][i] = all(ch in " \t" for ch in text)
            f["is_marker_punct"][i] = text in (".", ")")
            f["is_line_start"][i] = text.rstrip(" \t").endswith(("\n", "\r"))
            f["starts_with_space"][i] = text[0] in " \t"
            f["is_period"][i] = text == "."
            f["is_abbrev_stem"][i] = text.lstrip(_OPEN_BRACKETS).lower() in stems
            f["has_newline"][i] = "\n" in text or "\r" in text
            f["dollar_toggle"][i] = len(_DOLLAR_RUN.findall(text)) % 2 == 1
            f["math_opens"][i] = min(text.count("\\("), 127)
            f["math_closes"][i] = min(text.count("\\)"), 127)
            f["ends_with_backslash"][i] = text.endswith("\\")
            f["starts_with_lparen"][i] = text.startswith("(")
            f["starts_with_rparen"][i] = text.startswith(")")
        return cls(**{k: jnp.asarray(v) for k, v in f.items()})


def _tokenizer_texts(tokenizer: Any) -> tuple[list[str], frozenset[int]]:
    """Decoded text of every id of a Hugging Face tokenizer (transformers or `tokenizers`), and
    the ids of its special tokens."""
    if hasattr(tokenizer, "get_vocab_size"):  # tokenizers.Tokenizer
        n = tokenizer.get_vocab_size(with_added_tokens=True)
        added = tokenizer.get_added_tokens_decoder() if hasattr(tokenizer, "get_added_tokens_decoder") else {}
        special = frozenset(int(i) for i, tok in added.items() if getattr(tok, "special", False))
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
      cfg: segmentation settings (delimiter characters, sentence-only set, word boundary,
        abbreviations); segment with the same config.
      vocab_size: the model's vocabulary size when it is larger than the tokenizer's (Qwen pads
        its embedding matrix); extra ids are never delimiters. Must not be smaller.
    Returns:
      A `DelimiterTable` of shape [vocab_size or len(tokenizer)]; special tokens are never
      delimiters and are marked in ``is_special``.
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
