"""Exact-match numeric reward: the extracted answer equals the gold number (no symbolic maths).

Cheap and strict, for tasks whose answers are plain numbers (the built-in arithmetic task,
GSM8K). Both sides are read as exact rationals by `fractions.Fraction` after removing thousands
separators, ``$`` signs, ``\\text{...}`` wrappers and a trailing full stop; non-numeric answers
fall back to whitespace-insensitive string equality.
"""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np

from sspo_jax.rewards.config import RewardConfig
from sspo_jax.rewards.extract import extract_answer, gold_answer_text, last_boxed
from sspo_jax.rewards.inputs import RewardInput
from sspo_jax.rewards.output import RewardOutput
from sspo_jax.rewards.registry import register_reward

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")
_TEXT = re.compile(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}")


def _clean(answer: str) -> str:
    answer = _TEXT.sub(r"\1", answer)
    answer = answer.replace("\\$", "").replace("$", "").replace("\\!", "").replace("\\,", "")
    answer = _THOUSANDS.sub("", answer.strip())
    return answer.rstrip(".").strip()


def as_number(answer: str) -> Fraction | None:
    """`answer` as an exact rational (``"1,234"``, ``"-0.5"``, ``"3/4"``, ``"1e3"``), or None."""
    try:
        return Fraction(_clean(answer).replace(" ", ""))
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(prediction: str, gold: str, tolerance: float = 1e-6) -> bool:
    """True if both are numbers with ``|a - b| <= tolerance`` (exact rationals), or else equal as
    cleaned, whitespace-normalised strings."""
    a, b = as_number(prediction), as_number(gold)
    if a is not None and b is not None:
        return abs(a - b) <= Fraction(tolerance)
    return " ".join(_clean(prediction).split()) == " ".join(_clean(gold).split())


@register_reward("exact_match")
def exact_match_reward(inp: RewardInput, cfg: RewardConfig) -> RewardOutput:
    """1.0 where the extracted answer equals the gold answer numerically (or as a string).

    Numbers match within ``cfg.numeric_tolerance`` (see `answers_match`). With
    ``cfg.extraction="math_verify"`` (no answer extraction of its own) the last boxed content is
    used; golds are read per ``cfg.gold_extraction``.

    Args:
      inp: N decoded responses and their N gold answers.
      cfg: settings (called loosely, `overrides` replace single fields; see `RewardFunction`).
    Returns:
      `RewardOutput` with scores float32 [N] in {0, 1} and the count of responses without an
      answer.
    Raises:
      ValueError: `responses` and `golds` differ in length.
    """
    responses, golds = inp.responses, inp.golds
    scores = np.zeros(len(responses), dtype=np.float32)
    no_answer = 0
    for i, (response, gold) in enumerate(zip(responses, golds)):
        answer = last_boxed(response) if cfg.extraction == "math_verify" else extract_answer(response, cfg)
        if answer is None or not answer.strip():
            no_answer += 1
            continue
        scores[i] = float(answers_match(answer, gold_answer_text(gold, cfg.gold_extraction),
                                        cfg.numeric_tolerance))
    return RewardOutput(scores, no_answer=no_answer)
