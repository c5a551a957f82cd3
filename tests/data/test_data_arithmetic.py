"""The built-in arithmetic task: determinism, constraints, vocabulary, and that its worked
solutions score 1 with the math reward (and wrong answers 0)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from sspo_jax.data import ArithmeticConfig, ArithmeticSource, DataError, problem, problems
from sspo_jax.rewards import compute_rewards, exact_match_reward, format_reward, math_reward, RewardConfig

STEP = re.compile(r"^(\d+)([-+*/])(\d+)=(\d+)$")


def check_problem(item: dict[str, str], cfg: ArithmeticConfig) -> None:
    expr = re.fullmatch(r"Compute (.+)\.", item["prompt"]).group(1)
    assert eval(expr.replace("/", "//")) == int(item["answer"])  # noqa: S307 (digits and operators only)
    body, tail = item["solution"].split(". The answer is ")
    assert tail == f"\\boxed{{{item['answer']}}}."
    clauses = body.split(", ")
    assert cfg.min_steps <= len(clauses) <= cfg.max_steps
    previous = None
    for clause in clauses:
        a, op, b, result = STEP.match(clause).groups()
        a, b, result = int(a), int(b), int(result)
        assert op in cfg.operators
        assert cfg.min_operand <= b <= cfg.max_operand
        assert 0 <= result <= cfg.max_value
        if op == "/":
            assert b > 0 and a % b == 0 and result == a // b
        else:
            assert result == {"+": a + b, "-": a - b, "*": a * b}[op]
        assert previous is None or a == previous
        previous = result
    assert previous == int(item["answer"])
    assert set(item["prompt"] + item["solution"]) <= set("0123456789+-*/=,.() Compute Theanswris\\boxed{}")


@pytest.mark.parametrize(
    "cfg",
    [ArithmeticConfig(), ArithmeticConfig(min_steps=1, max_steps=5, operators="+-*/", max_operand=30),
     ArithmeticConfig(min_steps=3, max_steps=3, min_operand=0, max_operand=9, max_value=99, operators="-+")],
)
def test_problems_respect_the_knobs(cfg):
    for item in problems(150, seed=1, cfg=cfg):
        check_problem(item, cfg)


def test_example_shape():
    item = problem(2, seed=0)
    assert set(item) == {"prompt", "answer", "solution"}
    assert item["prompt"].startswith("Compute ") and item["solution"].endswith(f"\\boxed{{{item['answer']}}}.")


def test_seeded_and_prefix_stable():
    assert problems(20, seed=5) == problems(20, seed=5)
    assert problems(30, seed=5)[:20] == problems(20, seed=5)
    assert problems(20, seed=5) != problems(20, seed=6)
    source = ArithmeticSource(50, seed=5)
    assert source[17].prompt == problem(17, seed=5)["prompt"]
    assert source[17].meta["solution"] == problem(17, seed=5)["solution"]
    with pytest.raises(IndexError):
        source[50]


def test_solutions_verify_with_the_math_reward():
    items = problems(64, seed=11, cfg=ArithmeticConfig(operators="+-*/", max_steps=4))
    solutions = [p["solution"] for p in items]
    golds = [p["answer"] for p in items]
    out = math_reward(solutions, golds, workers=2, timeout_s=20)
    assert out.scores.tolist() == [1.0] * 64 and out.failures == 0 and out.timeouts == 0
    assert exact_match_reward(solutions, golds).scores.tolist() == [1.0] * 64
    assert format_reward(solutions, golds).scores.tolist() == [1.0] * 64
    wrong = [s.replace(f"\\boxed{{{g}}}", f"\\boxed{{{int(g) + 1}}}") for s, g in zip(solutions, golds)]
    combined = compute_rewards(wrong, golds, RewardConfig(weights={"math": 1.0, "exact_match": 1.0}, workers=2))
    assert combined.total.tolist() == [0.0] * 64


WORDED_STEP = re.compile(r"^(.+), so (she|he) has (\d+)([-+*/])(\d+)=(\d+) (\w+)$")


@pytest.mark.parametrize("operators", ["+-*", "+-*/"])
def test_worded_style_tells_the_same_chain_in_sentences(operators):
    cfg = ArithmeticConfig(min_steps=2, max_steps=4, max_operand=20, max_value=100, operators=operators,
                           style="worded")
    symbolic = dataclasses.replace(cfg, style="symbolic")
    for index, item in enumerate(problems(120, seed=3, cfg=cfg)):
        same = problem(index, seed=3, cfg=symbolic)
        assert item["answer"] == same["answer"]  # the same draws, rendered in words
        sentences = item["solution"].split(". ")
        name, start, noun = re.fullmatch(r"(\w+) starts with (\d+) (\w+)", sentences[0]).groups()
        assert sentences[-1] == f"The answer is \\boxed{{{item['answer']}}}."
        assert item["prompt"].startswith(f"{name} has {start} {noun}. ")
        assert item["prompt"].endswith(f" How many {noun} does {name} have now?")
        chain = []
        for sentence in sentences[1:-1]:
            action, pronoun, a, op, b, result, unit = WORDED_STEP.match(sentence).groups()
            assert unit == noun and f" {b}" in f" {action}" and b in item["prompt"]
            chain.append(f"{a}{op}{b}={result}")
        assert ", ".join(chain) == same["solution"].split(". The answer is ")[0]
    assert len({p["prompt"].split()[0] for p in problems(200, seed=3, cfg=cfg)}) > 5  # names vary


def test_worded_solutions_verify_with_the_math_reward():
    items = problems(32, seed=4, cfg=ArithmeticConfig(style="worded", operators="+-*/"))
    golds = [p["answer"] for p in items]
    assert math_reward([p["solution"] for p in items], golds, workers=2, timeout_s=20).scores.tolist() == [1.0] * 32
    assert problems(10, seed=4, cfg=ArithmeticConfig(style="worded")) == problems(
        10, seed=4, cfg=ArithmeticConfig(style="worded"))


def test_bad_knobs():
    with pytest.raises(DataError, match="data.arithmetic.style must be one of"):
        ArithmeticConfig(style="prose")
    with pytest.raises(DataError, match="min_operand <= max_operand <= max_value"):
        ArithmeticConfig(max_operand=2000)
    with pytest.raises(DataError, match="operators"):
        ArithmeticConfig(operators="+^")
    with pytest.raises(DataError, match="allow no problem"):
        problem(0, cfg=ArithmeticConfig(min_operand=9, max_operand=9, max_value=9, operators="+", min_steps=1))
    with pytest.raises(DataError, match="data.size"):
        ArithmeticSource(0)
