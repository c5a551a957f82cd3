"""The built-in multi-step arithmetic task the tiny default model is trained on.

A problem chains `num_steps` integer operations left to right, e.g. prompt ``Compute (17+25)*3-4.``
with solution ``17+25=42, 42*3=126, 126-4=122. The answer is \\boxed{122}.`` Each step of the
chain of thought is one clause, separated by ``,`` and closed by ``.``, so subsentence
segmentation sees one segment per step.

Choices (documented so the tiny model's tokenizer can stay small):

- integers only; every operand is in [min_operand, max_operand] and every intermediate result
  in [0, max_value] (default 999): ``-`` never goes below 0, ``*`` and ``+`` never above
  max_value, ``/`` only divides exactly (and only when listed in `operators`);
- the text uses only digits, ``+ - * / = , . ( )``, spaces, ``Compute``, ``The answer is`` and
  ``\\boxed{}``; parentheses appear only where precedence needs them;
- problem ``i`` of seed ``s`` depends only on (s, i) (``numpy.random.default_rng([s, i])``), so
  `problems(n, s)` is a prefix of `problems(n + k, s)` and sources are random-access.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sspo_jax.data import worded
from sspo_jax.data.records import DataError, PromptRecord

OPERATORS = "+-*/"
STYLES = ("symbolic", "worded")


@dataclasses.dataclass(frozen=True)
class ArithmeticConfig:
    """Difficulty knobs of the arithmetic task.

    Attributes:
      min_steps, max_steps: number of operations per problem, drawn uniformly in this range.
      min_operand, max_operand: range of every operand (non-negative integers).
      max_value: largest allowed intermediate or final result (results are in [0, max_value]).
      operators: the operations to draw from, a subset of ``+-*/``.
      style: ``symbolic`` (``Compute 17+25*3.``, clauses of equations) or ``worded`` (a short
        story whose solution is one natural-language sentence per step, `sspo_jax.data.worded`).
    """

    min_steps: int = 2
    max_steps: int = 3
    min_operand: int = 1
    max_operand: int = 50
    max_value: int = 999
    operators: str = "+-*"
    style: str = "symbolic"

    def __post_init__(self) -> None:
        def ok(cond: bool, message: str) -> None:
            if not cond:
                raise DataError(message)

        for name in ("min_steps", "max_steps", "min_operand", "max_operand", "max_value"):
            value = getattr(self, name)
            ok(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
               f"data.arithmetic.{name} must be a non-negative integer, got {value!r}")
        ok(1 <= self.min_steps <= self.max_steps,
           f"data.arithmetic needs 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        ok(self.min_operand <= self.max_operand <= self.max_value,
           "data.arithmetic needs min_operand <= max_operand <= max_value, got "
           f"{self.min_operand}, {self.max_operand}, {self.max_value}")
        ok(isinstance(self.operators, str) and len(self.operators) > 0
           and set(self.operators) <= set(OPERATORS) and len(set(self.operators)) == len(self.operators),
           f"data.arithmetic.operators must be distinct characters from {OPERATORS!r}, got {self.operators!r}")
        ok(self.style in STYLES, f"data.arithmetic.style must be one of {list(STYLES)}, got {self.style!r}")


def _operand_choices(op: str, value: int, cfg: ArithmeticConfig) -> tuple[int, int] | list[int] | None:
    lo, hi = cfg.min_operand, cfg.max_operand
    if op == "+":
        hi = min(hi, cfg.max_value - value)
    elif op == "-":
        hi = min(hi, value)
    elif op == "*":
        hi = min(hi, cfg.max_value // value) if value > 0 else hi
    else:
        divisors = [d for d in range(max(lo, 1), hi + 1) if value % d == 0]
        return divisors or None
    return (lo, hi) if lo <= hi else None


def _apply(op: str, a: int, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]


def problem(index: int, seed: int = 0, cfg: ArithmeticConfig | None = None) -> dict[str, str]:
    """Problem `index` of the task with `seed`: ``{"prompt", "answer", "solution"}`` strings.

    Deterministic in ``(seed, index)``. Raises `DataError` when `cfg` allows no problem with
    the drawn number of steps (after 1000 redraws).
    """
    cfg = cfg or ArithmeticConfig()
    rng = np.random.default_rng([seed, index])
    for _ in range(1000):  # redraw when the knobs leave no valid operation at some step
        steps = int(rng.integers(cfg.min_steps, cfg.max_steps + 1))
        value = start = int(rng.integers(cfg.min_operand, cfg.max_operand + 1))
        expr, additive, clauses, chain = str(value), False, [], []
        for _ in range(steps):
            options = [(op, c) for op in cfg.operators if (c := _operand_choices(op, value, cfg)) is not None]
            if not options:
                break
            op, choices = options[int(rng.integers(len(options)))]
            if isinstance(choices, list):
                operand = choices[int(rng.integers(len(choices)))]
            else:
                operand = int(rng.integers(choices[0], choices[1] + 1))
            result = _apply(op, value, operand)
            if op in "*/" and additive:
                expr = f"({expr})"
            expr = f"{expr}{op}{operand}"
            additive = op in "+-"
            clauses.append(f"{value}{op}{operand}={result}")
            chain.append((op, operand, result))
            value = result
        else:
            if cfg.style == "worded":
                return worded.render(start, chain, rng)
            return {
                "prompt": f"Compute {expr}.",
                "answer": str(value),
                "solution": f"{', '.join(clauses)}. The answer is \\boxed{{{value}}}.",
            }
    raise DataError(f"data.arithmetic settings {cfg} allow no problem with {cfg.min_steps} steps: widen "
                    "the operand range, raise max_value or add operators")


def problems(n: int, seed: int = 0, cfg: ArithmeticConfig | None = None) -> list[dict[str, str]]:
    """The first `n` problems of the task with `seed` (see `problem`)."""
    return [problem(i, seed, cfg) for i in range(n)]


class ArithmeticSource:
    """`PromptSource` of `size` arithmetic problems; meta carries the worked ``solution``.

    Args:
      size: number of problems (>= 1).
      seed: generator seed (problem i depends only on (seed, i)).
      cfg: difficulty knobs; None = `ArithmeticConfig()`.
    Raises:
      DataError: ``size < 1``.
    """

    def __init__(self, size: int, seed: int = 0, cfg: ArithmeticConfig | None = None) -> None:
        if size < 1:
            raise DataError(f"data.size must be >= 1 for the arithmetic task, got {size}")
        self.size, self.seed, self.cfg = size, seed, cfg or ArithmeticConfig()
        self.name = f"arithmetic(size={size}, seed={seed})"

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> PromptRecord:
        if not 0 <= index < self.size:
            raise IndexError(f"{self.name}: index {index} out of range")
        item = problem(index, self.seed, self.cfg)
        return PromptRecord(item["prompt"], item["answer"], {"solution": item["solution"], "index": index})
