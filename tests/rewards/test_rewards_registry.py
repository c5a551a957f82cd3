"""Reward registry and combination, config validation, exact-match, format, DAPO overlong."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sspo_jax.rewards import (
    RewardConfig,
    RewardConfigError,
    RewardOutput,
    answers_match,
    compute_rewards,
    exact_match_reward,
    format_reward,
    get_reward,
    overlong_penalty,
    overlong_reward,
    register_reward,
    registered_rewards,
    resolve_rewards,
)


def test_builtins_registered():
    assert {"math", "exact_match", "format", "overlong", "reasoning_gym"} <= set(registered_rewards())


def test_unknown_reward_lists_known_names():
    with pytest.raises(KeyError, match="known rewards: .*exact_match.*math"):
        get_reward("maths")
    with pytest.raises(RewardConfigError, match="unknown reward 'maths'.*'math'"):
        resolve_rewards(RewardConfig(weights={"maths": 1.0}))  # names resolve lazily, when used


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"workers": -1}, "rewards.workers"),
        ({"timeout_s": 0}, "rewards.timeout_s"),
        ({"start_method": "fork"}, "rewards.start_method"),
        ({"extraction": "last"}, "rewards.extraction"),
        ({"answer_patterns": ("no group",)}, "rewards.answer_patterns"),
        ({"answer_patterns": ("(unclosed",)}, "rewards.answer_patterns"),
        ({"overlong_cache_len": 0}, "rewards.overlong_cache_len"),
        ({"overlong_max_len": 8, "overlong_cache_len": 9}, "rewards.overlong_cache_len"),
        ({"weights": {}}, "rewards.weights"),
        ({"weights": {"math": "high"}}, "rewards.weights"),
        ({"gold_extraction": "gsm8k"}, "rewards.gold_extraction"),
    ],
)
def test_config_errors_name_the_key(changes, key):
    with pytest.raises(RewardConfigError, match=key.replace(".", r"\.")):
        RewardConfig(**changes)


def test_config_weights_forms():
    a = RewardConfig(weights={"math": 1.0, "format": 0.5})
    b = RewardConfig(weights=[("math", 1), ("format", 0.5)])
    assert a == b and a.weight_map == {"math": 1.0, "format": 0.5}
    hash(a)  # frozen and hashable


def test_combination_by_weights():
    responses = ["\\boxed{4}", "\\boxed{5}", "no answer"]
    golds = ["4", "4", "4"]
    lengths = np.array([10, 15, 30], dtype=np.int32)
    cfg = RewardConfig(weights={"math": 1.0, "format": 0.5, "overlong": 1.0}, workers=0,
                       overlong_max_len=20, overlong_cache_len=10)
    out = compute_rewards(responses, golds, cfg, response_lengths=lengths)
    np.testing.assert_allclose(out.per_function["math"].scores, [1, 0, 0])
    np.testing.assert_allclose(out.per_function["format"].scores, [1, 1, 0])
    np.testing.assert_allclose(out.per_function["overlong"].scores, [0, -0.5, -1])
    np.testing.assert_allclose(out.total, [1.5, 0.0, -1.0])
    assert out.total.dtype == np.float32
    metrics = out.metrics()
    assert metrics["reward/math/no_answer"] == 1 and metrics["reward/timeouts"] == 0
    assert list(out.per_function) == ["math", "format", "overlong"]


def test_custom_reward_registration():
    def length_bonus(responses, golds, *, metas, response_lengths, truncated, cfg):
        return RewardOutput(np.array([len(r) / 10 for r in responses]))

    register_reward("test_length_bonus", length_bonus, overwrite=True)
    with pytest.raises(ValueError, match="already registered"):
        register_reward("test_length_bonus", lambda *a, **k: None)
    out = compute_rewards(["ab", "abcd"], ["", ""], RewardConfig(weights={"test_length_bonus": 2.0}))
    np.testing.assert_allclose(out.total, [0.4, 0.8], rtol=1e-6)


def test_length_mismatches_are_errors():
    with pytest.raises(ValueError, match="response_lengths"):
        compute_rewards(["a", "b"], ["a", "b"], RewardConfig(weights={"format": 1.0}), response_lengths=np.array([1]))
    with pytest.raises(ValueError, match="token counts"):
        compute_rewards(["a"], ["a"], RewardConfig(weights={"overlong": 1.0}))


def _reference_overlong(length: int, lmax: int, lcache: int) -> float:
    if length <= lmax - lcache:
        return 0.0
    if length <= lmax:
        return ((lmax - lcache) - length) / lcache
    return -1.0


@given(st.integers(1, 64), st.data())
def test_overlong_penalty_matches_reference(lmax, data):
    lcache = data.draw(st.integers(1, lmax))
    lengths = np.array(data.draw(st.lists(st.integers(0, 2 * lmax), min_size=1, max_size=16)), dtype=np.int64)
    got = overlong_penalty(lengths, lmax, lcache)
    want = [_reference_overlong(int(n), lmax, lcache) for n in lengths]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert got.dtype == np.float32 and (got <= 0).all() and (got >= -1).all()


def test_overlong_boundaries_and_tokens_not_characters():
    got = overlong_penalty(np.array([0, 12, 13, 16, 20, 21]), max_len=20, cache_len=8)
    np.testing.assert_allclose(got, [0, 0, -1 / 8, -0.5, -1.0, -1.0])
    # the reward uses the token counts it is given, whatever the text length is
    out = overlong_reward(["x" * 1000, "x"], ["", ""], response_lengths=np.array([1, 20]),
                          overlong_max_len=20, overlong_cache_len=8)
    np.testing.assert_allclose(out.scores, [0.0, -1.0])
    with pytest.raises(ValueError, match="integer"):
        overlong_penalty(np.array([1.5]), 20, 8)


@pytest.mark.parametrize(
    "pred, gold, expected",
    [("18", "18", True), ("1,234", "1234", True), ("$18$", "18", True), ("18.", "18", True),
     ("3/4", "0.75", True), ("-2", "-2.0", True), ("\\text{7}", "7", True), ("17", "18", False),
     ("0.33", "1/3", False), ("abc", "abc", True), ("abc", "abd", False)],
)
def test_answers_match(pred, gold, expected):
    assert answers_match(pred, gold) is expected


def test_exact_match_reward():
    out = exact_match_reward(["so \\boxed{122}", "\\boxed{121}", "122"], ["122", "#### 122", "122"])
    assert out.scores.tolist() == [1.0, 0.0, 0.0] and out.no_answer == 1


def test_format_reward_modes():
    responses = ["\\boxed{3}", "The answer is 3.", "\\boxed{}", "nothing"]
    assert format_reward(responses, [""] * 4).scores.tolist() == [1, 0, 0, 0]
    assert format_reward(responses, [""] * 4, extraction="regex").scores.tolist() == [0, 1, 0, 0]
    assert format_reward(responses, [""] * 4).no_answer == 3
