"""`RewardConfig`: the frozen, validated settings of every reward function and their weights.

The trainer embeds it in its YAML config under ``rewards:``. Every field has a default; a wrong
type or an impossible value raises `RewardConfigError` naming the field and saying what to do.
Reward names are not looked up here (see `sspo_jax.rewards.registry`): they resolve lazily.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Literal

Extraction = Literal["boxed", "regex", "math_verify"]
GoldExtraction = Literal["auto", "raw"]
StartMethod = Literal["spawn", "forkserver"]

EXTRACTIONS = ("boxed", "regex", "math_verify")
GOLD_EXTRACTIONS = ("auto", "raw")
START_METHODS = ("spawn", "forkserver")

DEFAULT_ANSWER_PATTERNS = (
    r"####\s*(.+?)\s*$",
    r"[Tt]he (?:final )?answer is:?\s*(.+?)\s*\.?\s*$",
)


from sspo_jax.errors import ConfigError  # noqa: E402 - a leaf module: the rewards package stays JAX-free


class RewardConfigError(ConfigError):
    """An invalid reward setting; the message names the field (``rewards.<field>``) and the fix."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise RewardConfigError(message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Settings of the reward functions (registry names in `weights`) and their combination.

    Attributes:
      weights: reward name -> weight; the total reward of a response is the weighted sum of the
        named functions' scores. A mapping (as YAML gives) or a sequence of (name, weight) pairs;
        stored as a tuple of pairs in the given order. A name is a registered reward (see
        `sspo_jax.rewards.registered_rewards()`) or a ``package.module:function`` spec; names are
        resolved when the rewards are first computed (training checks them at start-up), so a
        config naming a custom reward loads in any process.
      workers: processes verifying math answers in parallel (math-verify, see `pool.py`);
        0 verifies in the calling process (debugging, benchmarks).
      timeout_s: per-response time limit of one math verification, enforced by the parent process
        (a hung worker is killed and replaced); a timeout scores 0 and is counted.
      start_method: how pool workers start, ``spawn`` or ``forkserver`` (never ``fork``: the
        parent has usually imported JAX, which is multithreaded).
      extraction: where the predicted answer is read from a response. ``boxed``: the content of
        the last ``\\boxed{...}`` (or ``\\fbox{...}``); ``regex``: group 1 of the last match of the
        first pattern in `answer_patterns` that matches; ``math_verify``: the whole response goes
        to math-verify's own extraction (boxed, "final answer is", last LaTeX or expression).
      answer_patterns: regular expressions (multiline mode) used when ``extraction="regex"``;
        each must have one capturing group around the answer.
      gold_extraction: ``auto`` reads a gold answer as GSM8K-style ``... #### 18`` (text after the
        last ``####``), else the last ``\\boxed{}`` if any, else the whole string; ``raw`` uses the
        whole string. Bare gold text is wrapped in ``$...$`` before math-verify parses it.
      float_rounding: decimal places math-verify rounds floats to before comparing.
      numeric_precision: significant digits of math-verify's numeric comparisons.
      strict: math-verify strict mode (variables must match; sets are not tuples).
      numeric_tolerance: absolute tolerance of the ``exact_match`` reward's numeric comparison.
      overlong_max_len: DAPO's L_max in tokens (ALGORITHMS.md section 4), the generation limit.
      overlong_cache_len: DAPO's L_cache in tokens: the soft-penalty zone below `overlong_max_len`.
      max_gold_unparsed_frac: training stops (naming the data file and line of one example) when
        more than this fraction of a step's responses have a gold answer that a reward cannot
        parse (math-verify: malformed LaTeX such as ``\\frac{{{``, ``NaN``); such rows score 0 and
        are counted in ``reward/<name>/gold_unparsed``. 1 = never stop.
      timeout_warn_frac: a console warning when more than this fraction of a step's responses
        timed out in verification (the progress bar shows the fraction whenever it is above 0).
    """

    weights: tuple[tuple[str, float], ...] = (("math", 1.0),)
    workers: int = 2
    timeout_s: float = 5.0
    start_method: StartMethod = "spawn"
    extraction: Extraction = "boxed"
    answer_patterns: tuple[str, ...] = DEFAULT_ANSWER_PATTERNS
    gold_extraction: GoldExtraction = "auto"
    float_rounding: int = 6
    numeric_precision: int = 15
    strict: bool = True
    numeric_tolerance: float = 1e-6
    overlong_max_len: int = 1024
    overlong_cache_len: int = 256
    max_gold_unparsed_frac: float = 0.5
    timeout_warn_frac: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", _normalise_weights(self.weights))
        if isinstance(self.answer_patterns, str):
            object.__setattr__(self, "answer_patterns", (self.answer_patterns,))
        object.__setattr__(self, "answer_patterns", tuple(self.answer_patterns))
        _check(_is_int(self.workers) and self.workers >= 0,
               f"rewards.workers must be an integer >= 0 (0 = verify in-process), got {self.workers!r}")
        _check(_is_number(self.timeout_s) and self.timeout_s > 0,
               f"rewards.timeout_s must be a positive number of seconds, got {self.timeout_s!r}")
        _check(self.start_method in START_METHODS,
               f"rewards.start_method={self.start_method!r} is not one of {list(START_METHODS)} "
               "(fork is unsafe once JAX is imported)")
        _check(self.extraction in EXTRACTIONS,
               f"rewards.extraction={self.extraction!r} is not one of {list(EXTRACTIONS)}")
        _check(self.gold_extraction in GOLD_EXTRACTIONS,
               f"rewards.gold_extraction={self.gold_extraction!r} is not one of {list(GOLD_EXTRACTIONS)}")
        for i, pattern in enumerate(self.answer_patterns):
            _check(isinstance(pattern, str), f"rewards.answer_patterns[{i}] must be a string, got {pattern!r}")
            try:
                groups = re.compile(pattern).groups
            except re.error as exc:
                raise RewardConfigError(
                    f"rewards.answer_patterns[{i}]={pattern!r} is not a valid regular expression: {exc}"
                ) from exc
            _check(groups >= 1, f"rewards.answer_patterns[{i}]={pattern!r} needs a capturing group "
                                "around the answer, e.g. 'answer is (.+)'")
        _check(self.extraction != "regex" or len(self.answer_patterns) > 0,
               "rewards.answer_patterns is empty but rewards.extraction='regex': give at least one pattern")
        _check(_is_int(self.float_rounding) and self.float_rounding >= 0,
               f"rewards.float_rounding must be an integer >= 0, got {self.float_rounding!r}")
        _check(_is_int(self.numeric_precision) and self.numeric_precision >= 1,
               f"rewards.numeric_precision must be an integer >= 1, got {self.numeric_precision!r}")
        _check(isinstance(self.strict, bool), f"rewards.strict must be true or false, got {self.strict!r}")
        _check(_is_number(self.numeric_tolerance) and self.numeric_tolerance >= 0,
               f"rewards.numeric_tolerance must be a number >= 0, got {self.numeric_tolerance!r}")
        _check(_is_int(self.overlong_max_len) and self.overlong_max_len >= 1,
               f"rewards.overlong_max_len must be an integer >= 1 (tokens), got {self.overlong_max_len!r}")
        _check(_is_int(self.overlong_cache_len) and 1 <= self.overlong_cache_len <= self.overlong_max_len,
               f"rewards.overlong_cache_len must be an integer in [1, overlong_max_len="
               f"{self.overlong_max_len}] (tokens), got {self.overlong_cache_len!r}")
        for name in ("max_gold_unparsed_frac", "timeout_warn_frac"):
            value = getattr(self, name)
            _check(_is_number(value) and 0 <= value <= 1, f"rewards.{name} must be a number in [0, 1], got {value!r}")

    @property
    def weight_map(self) -> dict[str, float]:
        """`weights` as a dict name -> weight."""
        return dict(self.weights)

    def replace(self, **changes: object) -> "RewardConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _normalise_weights(weights: object) -> tuple[tuple[str, float], ...]:
    pairs = list(weights.items()) if isinstance(weights, Mapping) else weights
    try:
        pairs = [tuple(p) for p in pairs]  # type: ignore[union-attr]
    except TypeError as exc:
        raise RewardConfigError(
            f"rewards.weights must be a mapping name -> weight, e.g. {{math: 1.0}}, got {weights!r}"
        ) from exc
    _check(len(pairs) > 0, "rewards.weights is empty: name at least one reward, e.g. {math: 1.0}")
    out: list[tuple[str, float]] = []
    for pair in pairs:
        _check(len(pair) == 2 and isinstance(pair[0], str) and _is_number(pair[1]),
               f"rewards.weights entries must be name -> finite number, got {pair!r}")
        _check(pair[0] not in dict(out), f"rewards.weights names {pair[0]!r} twice")
        out.append((pair[0], float(pair[1])))
    return tuple(out)


def make_config(cfg: RewardConfig | None = None, **overrides: object) -> RewardConfig:
    """`cfg` (default `RewardConfig()`) with `overrides` applied and validated.

    Raises:
      RewardConfigError: an unknown key or an invalid value.
    """
    base = cfg if cfg is not None else RewardConfig()
    if not overrides:
        return base
    fields = {f.name for f in dataclasses.fields(RewardConfig)}
    unknown = sorted(set(overrides) - fields)
    _check(not unknown, f"unknown reward setting(s) {unknown}; known: {sorted(fields)}")
    return dataclasses.replace(base, **overrides)
