"""The math answer reward over a table of (response, gold, expected) cases, pool and in-process."""

from __future__ import annotations

import numpy as np
import pytest

from sspo_jax.rewards import RewardConfig, gold_answer_text, last_boxed, math_reward

B = "The answer is \\boxed{%s}."

# (response, gold, expected score): equivalent and non-equivalent forms.
CASES = [
    # integers, GSM8K golds, thousands separators
    (B % "18", "#### 18", 1.0),
    (B % "18", "Janet sells 16 - 3 - 4 = 9 eggs... #### 18", 1.0),
    (B % "17", "#### 18", 0.0),
    (B % "1,234", "1234", 1.0),
    (B % "1234", "#### 1,234", 1.0),
    (B % "-4", "-4", 1.0),
    (B % "4", "-4", 0.0),
    (B % "0", "0", 1.0),
    # fractions and decimals
    (B % "\\frac{1}{2}", "0.5", 1.0),
    (B % "0.5", "\\frac{1}{2}", 1.0),
    (B % "\\dfrac{3}{4}", "0.75", 1.0),
    (B % "3/4", "\\frac34", 1.0),
    (B % "\\frac{2}{3}", "0.6667", 0.0),
    (B % "\\frac{1}{3}", "0.333333", 1.0),
    (B % "\\frac{1}{3}", "0.3", 0.0),
    (B % "2.50", "2.5", 1.0),
    (B % "2.51", "2.5", 0.0),
    (B % "\\frac{6}{4}", "\\frac{3}{2}", 1.0),
    # percents
    (B % "50\\%", "50", 1.0),
    (B % "50\\%", "0.5", 1.0),
    (B % "40\\%", "0.5", 0.0),
    # LaTeX expressions
    (B % "2\\sqrt{2}", "\\sqrt{8}", 1.0),
    (B % "\\sqrt{3}", "\\sqrt{2}", 0.0),
    (B % "\\frac{\\sqrt{3}}{2}", "\\sin(\\pi/3)", 1.0),
    (B % "10^{3}", "1000", 1.0),
    (B % "2^{10}", "1000", 0.0),
    (B % "\\pi", "\\pi", 1.0),
    (B % "2\\pi", "\\pi", 0.0),
    (B % "x^2+2x+1", "(x+1)^2", 1.0),
    (B % "x^2+1", "(x+1)^2", 0.0),
    (B % "x=3", "3", 1.0),
    (B % "\\$18", "18", 1.0),
    (B % "\\text{(B)}", "B", 1.0),
    # sets and tuples
    (B % "\\{1,2,3\\}", "\\{3,2,1\\}", 1.0),
    (B % "\\{1,2\\}", "\\{1,2,3\\}", 0.0),
    (B % "2, 3", "3, 2", 1.0),
    # intervals
    (B % "[1,2)", "[1,2)", 1.0),
    (B % "(1,2]", "[1,2)", 0.0),
    (B % "(-\\infty, 3]", "x \\le 3", 1.0),
    (B % "(0,\\infty)", "(0,\\infty)", 1.0),
    (B % "(-\\infty,0)", "(0,\\infty)", 0.0),
    # gold given as a boxed solution (MATH style)
    (B % "5", "so the result is $\\boxed{5}$", 1.0),
    # the last box counts; nested braces inside the box
    ("First \\boxed{3}, then corrected: \\boxed{4}", "4", 1.0),
    ("First \\boxed{4}, then corrected: \\boxed{3}", "4", 0.0),
    (B % "\\frac{1}{\\frac{1}{2}}", "2", 1.0),
    # no answer in the expected form, or garbage
    ("The answer is 18.", "18", 0.0),
    ("\\boxed{}", "18", 0.0),
    ("\\boxed{18", "18", 0.0),
    (B % "hello", "18", 0.0),
    (B % "}{", "18", 0.0),
]


def test_table_is_large_and_balanced():
    expected = [c[2] for c in CASES]
    assert len(CASES) >= 40
    assert expected.count(1.0) >= 15 and expected.count(0.0) >= 15


@pytest.fixture(scope="module")
def pool_scores():
    out = math_reward([c[0] for c in CASES], [c[1] for c in CASES], workers=2, timeout_s=20)
    assert out.failures == 0 and out.timeouts == 0
    return out


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0][-28:]}|{c[1][-12:]}" for c in CASES])
def test_math_reward_case(pool_scores, index):
    response, gold, expected = CASES[index]
    assert pool_scores.scores[index] == expected, (response, gold)


def test_in_process_matches_pool(pool_scores):
    out = math_reward([c[0] for c in CASES], [c[1] for c in CASES], workers=0, timeout_s=20)
    np.testing.assert_array_equal(out.scores, pool_scores.scores)
    assert out.scores.dtype == np.float32
    assert out.failures == 0 and out.timeouts == 0


def test_no_answer_is_counted(pool_scores):
    # plain text, empty box, unclosed box, and "\\boxed{}{}" (its box is empty)
    assert pool_scores.no_answer == 4


def test_regex_and_math_verify_extraction():
    responses = ["So the final answer is 3/4.", "We get 12.\n#### 12", "the answer is 7"]
    golds = ["0.75", "12", "8"]
    out = math_reward(responses, golds, workers=0, extraction="regex")
    assert out.scores.tolist() == [1.0, 1.0, 0.0]
    out = math_reward(["Thus $x = \\frac{1}{2}$, final answer $\\boxed{\\frac12}$"], ["0.5"], workers=0,
                      extraction="math_verify")
    assert out.scores.tolist() == [1.0]


def test_last_boxed_and_gold_text():
    assert last_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{x^{2}}") == "x^{2}"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("\\boxed 5$") == "5"
    assert last_boxed("\\boxed{1") is None
    assert last_boxed("no box") is None
    assert gold_answer_text("a\n#### 1,234") == "1,234"
    assert gold_answer_text("$\\boxed{2}$") == "2"
    assert gold_answer_text("#### 3", mode="raw") == "#### 3"


def test_empty_and_mismatched_inputs():
    assert math_reward([], [], workers=0).scores.shape == (0,)
    with pytest.raises(ValueError, match="gold"):
        math_reward(["a"], [], workers=0)
    with pytest.raises(ValueError, match="unknown reward setting"):
        math_reward(["a"], ["b"], wrkers=0)


def test_config_object_and_overrides_agree():
    cfg = RewardConfig(workers=0)
    a = math_reward([B % "2"], ["2"], cfg=cfg)
    b = math_reward([B % "2"], ["2"], workers=0)
    assert a == b or (a.scores == b.scores).all()
