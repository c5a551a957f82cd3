"""`estimate_advantages`, the one entry point of every advantage estimator, against the
independent NumPy references: one shape ([N, T] advantages and returns) for every estimator."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sspo_jax.algorithms import presets
from sspo_jax.algorithms.advantages import AdvantageResult, estimate_advantages
from tests.algorithms.numpy_reference import (np_gae, np_group_mean, np_group_zscore, np_kl,
                                              np_outcome_token_rewards, np_rloo, np_sequence_baseline,
                                              np_zero_var_group_fraction)

N, T, G = 8, 6, 4


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    rewards = rng.integers(0, 2, N).astype(np.float32)
    rewards[:G] = 1.0  # one all-equal group: advantage exactly 0
    lengths = rng.integers(1, T + 1, N)
    mask = np.arange(T)[None, :] < lengths[:, None]
    return rewards, mask, rng.normal(size=(N, T)).astype(np.float32), rng.normal(size=N).astype(np.float32)


@pytest.mark.parametrize("estimator", ["group_zscore", "group_mean", "rloo"])
def test_group_estimators_broadcast_their_numpy_reference(estimator):
    rewards, mask, _, _ = _inputs()
    cfg = presets.get("grpo", advantage=estimator, group_size=G)
    out = jax.jit(lambda r, m: estimate_advantages(cfg, r, m))(jnp.asarray(rewards), jnp.asarray(mask))
    assert isinstance(out, AdvantageResult) and out.advantages.shape == out.returns.shape == (N, T)
    ref = {"group_zscore": lambda: np_group_zscore(rewards, G), "group_mean": lambda: np_group_mean(rewards, G),
           "rloo": lambda: np_rloo(rewards, G)}[estimator]()
    np.testing.assert_allclose(np.asarray(out.advantages), np.broadcast_to(ref[:, None], (N, T)), atol=1e-6)
    assert np.all(np.asarray(out.advantages)[:G] == 0.0), "an all-equal group gets exactly 0"
    np.testing.assert_array_equal(np.asarray(out.returns), 0.0)
    assert float(out.metrics["zero_variance_group_frac"]) == pytest.approx(np_zero_var_group_fraction(rewards, G))


@pytest.mark.parametrize("whiten", [False, True])
def test_gae_matches_the_numpy_reference(whiten):
    rewards, mask, values, _ = _inputs(1)
    cfg = presets.get("ppo", gae_gamma=0.9, gae_lambda=0.8, whiten_advantages=whiten)
    out = estimate_advantages(cfg, jnp.asarray(rewards), jnp.asarray(mask), values=jnp.asarray(values))
    adv, ret = np_gae(np_outcome_token_rewards(rewards, mask), values, mask, 0.9, 0.8)
    if whiten:
        v = adv[mask]
        adv = np.where(mask, (adv - v.mean()) / (v.std() + 1e-8), 0.0)
    np.testing.assert_allclose(np.asarray(out.advantages)[mask], adv[mask], atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.returns)[mask], ret[mask], atol=1e-5)
    assert float(out.metrics["value_mean"]) == pytest.approx(values[mask].mean(), abs=1e-6)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_gae_with_the_kl_in_the_reward_matches_the_numpy_reference(estimator):
    rewards, mask, values, _ = _inputs(4)
    rng = np.random.default_rng(5)
    old = rng.normal(-1.0, 0.3, (N, T)).astype(np.float32)
    ref = (old + rng.normal(0.0, 0.2, (N, T))).astype(np.float32)
    beta = 0.05
    cfg = presets.get("ppo", gae_gamma=0.95, gae_lambda=0.9, whiten_advantages=False, kl_in_reward_beta=beta,
                      kl_in_reward_estimator=estimator)
    out = jax.jit(lambda *a: estimate_advantages(cfg, a[0], a[1], values=a[2], old_logp=a[3], ref_logp=a[4]))(
        *map(jnp.asarray, (rewards, mask, values, old, ref)))
    # r_t = -beta * KL_t on every response token, plus R on the last one (InstructGPT, verl use_kl_in_reward)
    kl = np.where(mask, np_kl(old, ref, estimator), 0.0)
    token_rewards = np_outcome_token_rewards(rewards, mask) - beta * kl
    adv, ret = np_gae(token_rewards, values, mask, 0.95, 0.9)
    np.testing.assert_allclose(np.asarray(out.advantages)[mask], adv[mask], atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.returns)[mask], ret[mask], atol=1e-5)
    assert float(out.metrics["kl_in_reward_mean"]) == pytest.approx(kl[mask].mean(), abs=1e-6)
    plain = estimate_advantages(cfg.replace(kl_in_reward_beta=0.0), jnp.asarray(rewards), jnp.asarray(mask),
                                values=jnp.asarray(values))
    assert not np.allclose(np.asarray(plain.advantages)[mask], adv[mask], atol=1e-4), "the KL term changes A"
    assert "kl_in_reward_mean" not in plain.metrics
    with pytest.raises(ValueError, match="old_logp"):
        estimate_advantages(cfg, jnp.asarray(rewards), jnp.asarray(mask), values=jnp.asarray(values))


def test_sequence_baseline_matches_the_numpy_reference():
    rewards, mask, _, logits = _inputs(2)
    cfg = presets.get("sppo")
    out = estimate_advantages(cfg, jnp.asarray(rewards), jnp.asarray(mask), prompt_logits=jnp.asarray(logits))
    ref = np_sequence_baseline(rewards, logits)
    np.testing.assert_allclose(np.asarray(out.advantages), np.broadcast_to(ref[:, None], (N, T)), atol=1e-6)
    assert float(out.metrics["critic_value_mean"]) == pytest.approx(float(np.mean(1 / (1 + np.exp(-logits)))),
                                                                    abs=1e-6)


@pytest.mark.parametrize("preset, missing", [("ppo", "values"), ("sppo", "prompt_logits")])
def test_critic_estimators_name_their_missing_input(preset, missing):
    rewards, mask, _, _ = _inputs()
    with pytest.raises(ValueError, match=missing):
        estimate_advantages(presets.get(preset), jnp.asarray(rewards), jnp.asarray(mask))


def test_every_preset_has_a_working_estimator():
    rewards, mask, values, logits = _inputs(3)
    for name in presets.names():
        cfg = presets.get(name)
        n = N - N % cfg.group_size
        out = estimate_advantages(cfg, jnp.asarray(rewards[:n]), jnp.asarray(mask[:n]),
                                  values=jnp.asarray(values[:n]), prompt_logits=jnp.asarray(logits[:n]))
        assert out.advantages.shape == (n, T) and bool(jnp.all(jnp.isfinite(out.advantages))), name
