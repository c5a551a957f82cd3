"""The math answer check of sspo_jax's ``math`` reward, for the peer frameworks' own venvs.

The peer scripts cannot import sspo_jax (no JAX in TRL's venv, other pins in Tunix's), so this is
the same check in a few lines: the content of the last ``\\boxed{...}`` of a response (as
`sspo_jax.rewards.extract.last_boxed`), wrapped in ``$...$`` and compared with the gold answer by
math-verify (installed into each peer venv at the version of sspo_jax's ``math-verify`` pin) with
sspo_jax's defaults: LaTeX + expression extraction, ``float_rounding=6``,
``numeric_precision=15``, ``strict=True``. A response without a box, a gold that does not parse,
a verifier error or a timeout scores 0, as in sspo_jax. It runs in the calling process (sspo_jax
verifies in a pool of ``rewards.workers`` processes); `tests/benchmarks/test_bench_peers.py`
checks that it agrees with sspo_jax's reward on the task's responses.
"""

from __future__ import annotations

import functools
import logging
import re
import threading

_BOX_OPENERS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in `text` (braces balanced), or None."""
    start = max(text.rfind(opener) for opener in _BOX_OPENERS)
    if start < 0:
        return None
    opener = next(o for o in _BOX_OPENERS if text.startswith(o, start))
    i = start + len(opener)
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        match = re.match(r"[^\s$]+", text[i:])
        return match.group(0) if match else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def _latex(answer: str) -> str:
    return answer if "$" in answer.replace("\\$", "") else f"${answer}$"


@functools.lru_cache(maxsize=1)
def _configs():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return [LatexExtractionConfig(), ExprExtractionConfig()]


def _parse(text: str, timeout: int | None):
    from math_verify import parse

    return parse(text, _configs(), parsing_timeout=timeout, raise_on_error=True)


@functools.lru_cache(maxsize=4096)
def _gold(text: str, timeout: int | None) -> tuple:
    return tuple(_parse(_latex(text), timeout))


def score(response: str, gold: str, timeout_s: int = 5) -> float:
    """1.0 when the last boxed answer of `response` equals `gold` per math-verify, else 0.0."""
    from math_verify import verify

    timeout = timeout_s if threading.current_thread() is threading.main_thread() else None
    answer = last_boxed(response)
    gold = gold.strip()
    if answer is None or not answer.strip() or not gold:
        return 0.0
    try:
        gold_parsed = list(_gold(gold, timeout))
        if not any(not isinstance(p, str) for p in gold_parsed):
            return 0.0  # a gold math-verify cannot parse (sspo_jax counts it as gold_unparsed)
        pred = _parse(_latex(answer.strip()), timeout)
        if not pred:
            return 0.0
        ok = verify(gold_parsed, pred, float_rounding=6, numeric_precision=15, strict=True,
                    timeout_seconds=timeout, raise_on_error=True)
    except BaseException as err:  # noqa: BLE001 - math-verify's TimeoutException is a BaseException
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        return 0.0
    return 1.0 if ok else 0.0


def scores(responses: list[str], golds: list[str]) -> list[float]:
    """`score` of each (response, gold) pair."""
    return [score(r, g) for r, g in zip(responses, golds)]
