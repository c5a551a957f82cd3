"""math-verify calls for one (prediction, gold) pair; run in pool workers or in-process.

`verify_answer` is a module-level function so that `pool.VerifierPool` can pickle it by reference
into spawned workers. It never swallows errors: a math-verify crash propagates (the caller counts
it as a failure) and, when math-verify's own signal-based timeouts are enabled (in-process on the
main thread only), its `TimeoutException` propagates too.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from sspo_jax.rewards.extract import as_latex_math


@functools.lru_cache(maxsize=1)
def _extraction_config() -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(), ExprExtractionConfig()]


def _parse(text: str, timeout_s: int | None) -> list[Any]:
    from math_verify import parse

    return parse(text, _extraction_config(), parsing_timeout=timeout_s, raise_on_error=True)


@functools.lru_cache(maxsize=4096)
def _parse_gold_cached(text: str, timeout_s: int | None) -> tuple[Any, ...]:
    """Gold answers repeat (G responses per prompt): parse each once per process."""
    return tuple(_parse(text, timeout_s))


def verify_answer(
    prediction: str,
    gold: str,
    whole_response: bool = False,
    float_rounding: int = 6,
    numeric_precision: int = 15,
    strict: bool = True,
    timeout_s: int | None = None,
) -> float:
    """1.0 if `prediction` is mathematically equivalent to `gold` per math-verify, else 0.0.

    Args:
      prediction: the extracted answer (wrapped in ``$...$`` here), or a whole response when
        `whole_response` is true (math-verify's own extraction then finds the answer).
      gold: the gold answer text (already reduced by `extract.gold_answer_text`); wrapped in
        ``$...$`` unless it contains ``$``.
      float_rounding, numeric_precision, strict: math-verify's comparison settings.
      timeout_s: math-verify's own signal.alarm timeout in whole seconds; None disables it (always
        None in pool workers and off the main thread: the caller enforces the time limit).
    Raises:
      Whatever math-verify raises on an internal error, and `math_verify.errors.TimeoutException`
      (a BaseException) when its own timeout fires.
    """
    from math_verify import verify

    gold_parsed = list(_parse_gold_cached(as_latex_math(gold), timeout_s))
    pred_parsed = _parse(prediction if whole_response else as_latex_math(prediction), timeout_s)
    if not gold_parsed or not pred_parsed:
        return 0.0
    ok = verify(
        gold_parsed,
        pred_parsed,
        float_rounding=float_rounding,
        numeric_precision=numeric_precision,
        strict=strict,
        timeout_seconds=timeout_s,
        raise_on_error=True,
    )
    return 1.0 if ok else 0.0


MISSING_VALUE_GOLDS = ("nan",)
"""Gold texts that are a missing value written out (a float NaN read from JSON or Parquet), not an answer."""


def gold_parses(gold: str, timeout_s: int | None = None) -> bool:
    """True when math-verify parses `gold` (as `verify_answer` would) into a math expression.

    math-verify keeps the raw string as its only result when its LaTeX and expression parsers
    both fail (``\\frac{{{``); a gold answer like that can never match a response. A gold text
    that is a missing value (``nan``) does not parse either. Cached per process, like the gold
    parse of `verify_answer`.
    """
    if gold.strip().lower() in MISSING_VALUE_GOLDS:
        return False
    return any(not isinstance(p, str) for p in _parse_gold_cached(as_latex_math(gold), timeout_s))


def warm_up() -> int:
    """Import math-verify and sympy and parse once (pool start-up); returns the process id."""
    import os

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    verify_answer("\\frac{1}{2}", "0.5")
    return os.getpid()
