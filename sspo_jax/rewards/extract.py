"""Reading answers out of text: the last ``\\boxed{...}``, regex patterns, GSM8K ``#### 18`` golds.

These are cheap string operations done in the calling process; the mathematical comparison of
what they return is math-verify's job (`verify.py`).
"""

from __future__ import annotations

import functools
import re

from sspo_jax.rewards.config import RewardConfig

_BOX_OPENERS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in `text` (braces balanced), or None.

    ``\\boxed 5`` (no braces, as some models write) yields ``5``. An unclosed box yields None.
    """
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
                return text[i + 1 : j]
    return None


@functools.lru_cache(maxsize=64)
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.MULTILINE) for p in patterns)


def last_pattern_match(text: str, patterns: tuple[str, ...]) -> str | None:
    """Group 1 of the last match of the first pattern in `patterns` that matches `text`, or None."""
    for pattern in _compiled(tuple(patterns)):
        matches = list(pattern.finditer(text))
        if matches:
            return matches[-1].group(1)
    return None


def extract_answer(response: str, cfg: RewardConfig) -> str | None:
    """The predicted answer in `response` per ``cfg.extraction``, stripped; None if absent or empty.

    With ``extraction="math_verify"`` the whole response is returned (math-verify extracts later),
    or None when it is blank.
    """
    if cfg.extraction == "boxed":
        found = last_boxed(response)
    elif cfg.extraction == "regex":
        found = last_pattern_match(response, cfg.answer_patterns)
    else:
        found = response
    if found is None or not found.strip():
        return None
    return found.strip()


GOLD_FORMATS = ("auto", "raw", "gsm8k", "boxed")


def gold_answer(gold: str, mode: str = "auto") -> str | None:
    """The answer part of a gold string; the one place gold answers are parsed (data sources and
    rewards both call it).

    Modes: ``gsm8k`` the text after the last ``####`` (None without one); ``boxed`` the last
    ``\\boxed{}`` content (None without one); ``raw`` the whole string; ``auto`` the first of
    gsm8k, boxed and raw that applies. The result is stripped.
    """
    gold = gold.strip()
    if mode not in GOLD_FORMATS:
        raise ValueError(f"gold answer format {mode!r} is not one of {list(GOLD_FORMATS)}")
    if mode in ("gsm8k", "auto") and "####" in gold:
        return gold.rsplit("####", 1)[1].strip()
    if mode == "gsm8k":
        return None
    if mode in ("boxed", "auto"):
        boxed = last_boxed(gold)
        if boxed is not None and (boxed.strip() or mode == "boxed"):
            return boxed.strip()
        if mode == "boxed":
            return None
    return gold


def gold_answer_text(gold: str, mode: str = "auto") -> str:
    """The answer part of a gold string for the rewards (``auto`` or ``raw``, see `gold_answer`):
    after the last ``####`` (GSM8K), else the last boxed content, else the whole string (stripped)."""
    return gold_answer(gold, mode) or ""


def as_latex_math(answer: str) -> str:
    """`answer` wrapped in ``$...$`` so math-verify parses it as LaTeX, unless it has ``$`` already."""
    return answer if "$" in answer.replace("\\$", "") else f"${answer}$"
