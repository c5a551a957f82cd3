"""Advantage estimators, KL estimators and value losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sspo_jax.algorithms import advantages as adv
from sspo_jax.algorithms import bce_critic_loss, clipped_value_loss, kl_penalty


@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_group_advantages_sum_to_zero(n_groups, g, seed):
    rng = np.random.default_rng(seed)
    rewards = jnp.asarray(rng.choice([0.0, 0.5, 1.0], size=n_groups * g), jnp.float32)
    for a in (adv.group_zscore(rewards, g)[0], adv.group_mean(rewards, g), adv.rloo(rewards, g)):
        sums = np.asarray(a).reshape(n_groups, g).sum(axis=1)
        np.testing.assert_allclose(sums, 0.0, atol=1e-5)
        assert np.all(np.isfinite(np.asarray(a)))


def test_all_equal_groups_give_exactly_zero_even_with_float_residue():
    # 0.1 + 0.2 != 0.3 in float: a naive std would be a tiny residue, not 0.
    r = jnp.asarray([0.3, 0.1 + 0.2, 0.3, 0.3, 1.0, 0.0, 1.0, 0.0], jnp.float32)
    r = r.at[:4].set(jnp.float32(0.1) + jnp.float32(0.2))
    a, frac = adv.group_zscore(r, 4)
    np.testing.assert_array_equal(np.asarray(a)[:4], 0.0)
    assert float(frac) == 0.5
    np.testing.assert_array_equal(np.asarray(adv.group_mean(r, 4))[:4], 0.0)
    np.testing.assert_array_equal(np.asarray(adv.rloo(r, 4))[:4], 0.0)
    # the other group: z-scores with the unbiased std
    g = np.array([1.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(np.asarray(a)[4:], (g - g.mean()) / (g.std(ddof=1) + 1e-6), rtol=1e-6)


def test_group_size_one_and_validity():
    r = jnp.asarray([1.0, 0.0, 1.0])
    a, frac = adv.group_zscore(r, 1)
    np.testing.assert_array_equal(a, 0.0)
    assert float(frac) == 1.0
    np.testing.assert_array_equal(adv.rloo(r, 1), 0.0)
    a, _ = adv.group_zscore(jnp.asarray([1.0, 0.0, 0.0, 1.0]), 2, valid=jnp.asarray([True, False, True, True]))
    assert float(a[1]) == 0.0 and float(a[0]) > 0
    with pytest.raises(ValueError, match="whole groups"):
        adv.group_zscore(jnp.ones(5), 2)


def test_rloo_is_leave_one_out():
    r = np.array([1.0, 0.0, 0.5, 0.25], np.float32)
    expect = [r[i] - np.delete(r, i).mean() for i in range(4)]
    np.testing.assert_allclose(adv.rloo(jnp.asarray(r), 4), expect, rtol=1e-6)


def test_outcome_rewards_on_last_valid_token():
    mask = jnp.asarray([[0, 1, 1, 1, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], bool)
    tr = np.asarray(adv.outcome_token_rewards(jnp.asarray([2.0, 3.0, 4.0]), mask))
    np.testing.assert_array_equal(tr, [[0, 0, 0, 2, 0], [0, 0, 0, 0, 0], [4, 0, 0, 0, 0]])


def test_gae_gamma_lambda_one_gives_return_minus_value():
    rng = np.random.default_rng(0)
    mask = np.zeros((3, 8), bool)
    mask[0, 2:6] = True
    mask[1, 0:8] = True
    mask[2, 3:4] = True
    values = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
    r = jnp.asarray([1.0, 0.0, 1.0])
    a, ret = adv.gae(adv.outcome_token_rewards(r, jnp.asarray(mask)), values, jnp.asarray(mask), gamma=1.0, lam=1.0)
    expect = np.where(mask, np.asarray(r)[:, None] - np.asarray(values), 0.0)
    np.testing.assert_allclose(a, expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, np.where(mask, np.asarray(r)[:, None], 0.0), rtol=1e-5, atol=1e-6)


def test_gae_matches_a_python_loop_with_holes():
    rng = np.random.default_rng(1)
    mask = rng.random((2, 9)) > 0.3
    r = rng.normal(size=(2, 9)).astype(np.float32)
    v = rng.normal(size=(2, 9)).astype(np.float32)
    gamma, lam = 0.9, 0.8
    expect = np.zeros_like(r)
    for b in range(2):
        next_v, next_a = 0.0, 0.0
        for t in reversed(range(9)):
            if not mask[b, t]:
                continue
            delta = r[b, t] + gamma * next_v - v[b, t]
            next_a = delta + gamma * lam * next_a
            expect[b, t] = next_a
            next_v = v[b, t]
    a, ret = adv.gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(mask), gamma=gamma, lam=lam)
    np.testing.assert_allclose(a, expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, np.where(mask, expect + v, 0), rtol=1e-5, atol=1e-6)


def test_whiten_over_valid_tokens():
    x = jnp.asarray([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = jnp.asarray([[1, 1, 0], [1, 1, 0]], bool)
    w = np.asarray(adv.whiten(x, mask))
    assert w[0, 2] == 0 and w[1, 2] == 0
    np.testing.assert_allclose(w[mask].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(w[np.asarray(mask)].std(), 1.0, rtol=1e-5)


def test_sequence_baseline_and_bce_gradient_is_minus_advantage():
    z = jnp.asarray([-2.0, 0.0, 1.5, 30.0, -30.0])
    r = jnp.asarray([1.0, 0.0, 1.0, 0.0, 1.0])
    a = adv.sequence_baseline(r, z)
    np.testing.assert_allclose(a, np.asarray(r) - 1 / (1 + np.exp(-np.asarray(z))), rtol=1e-6)
    grad = jax.grad(lambda zz: bce_critic_loss(zz, r)[0])(z)
    np.testing.assert_allclose(grad, -np.asarray(a), rtol=1e-5, atol=1e-7)
    s, d = bce_critic_loss(z, r)
    assert np.isfinite(float(s)) and float(d) == 5.0
    s_valid, d_valid = bce_critic_loss(z, r, valid=jnp.asarray([1, 1, 0, 0, 0], bool))
    assert float(d_valid) == 2.0 and float(s_valid) < float(s)


def test_clipped_value_loss_matches_formula_and_clips():
    v = jnp.asarray([[0.0, 2.0, -1.0, 5.0]])
    v_old = jnp.asarray([[0.1, 0.0, 0.0, 0.0]])
    ret = jnp.asarray([[0.5, 0.0, 1.0, 9.0]])
    mask = jnp.asarray([[1, 1, 1, 0]], bool)
    s, d = clipped_value_loss(v, v_old, ret, mask, clip=0.5)
    vc = np.clip(np.asarray(v), np.asarray(v_old) - 0.5, np.asarray(v_old) + 0.5)
    per = 0.5 * np.maximum((np.asarray(v) - np.asarray(ret)) ** 2, (vc - np.asarray(ret)) ** 2)
    np.testing.assert_allclose(float(s), per[0, :3].sum(), rtol=1e-6)
    assert float(d) == 3.0


@given(st.lists(st.floats(-50, 50, width=32), min_size=1, max_size=8),
       st.lists(st.floats(-50, 50, width=32), min_size=1, max_size=8))
def test_k3_is_nonnegative_and_zero_iff_equal(lp, ref):
    n = min(len(lp), len(ref))
    lp_a, ref_a = jnp.asarray([lp[:n]]), jnp.asarray([ref[:n]])
    k3 = np.asarray(kl_penalty(lp_a, ref_a, "k3"))
    d = np.asarray(ref_a) - np.asarray(lp_a)
    assert np.all(k3 >= 0) and np.all(np.isfinite(k3))
    assert np.all(k3[d == 0] == 0) and np.all(k3[np.abs(d) > 1e-3] > 0)  # 0 iff equal (up to fp32 rounding)
    np.testing.assert_array_equal(np.asarray(kl_penalty(lp_a, lp_a, "k3")), 0.0)


def test_kl_estimators_values_and_clamp():
    lp = jnp.asarray([[-1.0, -2.0]])
    ref = jnp.asarray([[-1.5, -1.0]])
    d = np.asarray(ref - lp)
    np.testing.assert_allclose(kl_penalty(lp, ref, "k1"), -d, rtol=1e-6)
    np.testing.assert_allclose(kl_penalty(lp, ref, "k2"), 0.5 * d**2, rtol=1e-6)
    np.testing.assert_allclose(kl_penalty(lp, ref, "k3"), np.exp(d) - d - 1, rtol=1e-6)
    assert float(jnp.max(kl_penalty(jnp.asarray([[-1e4]]), jnp.asarray([[0.0]]), "k3", clamp=10.0))) == 10.0
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_penalty(lp, ref, "k4")
