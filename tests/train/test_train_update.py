"""The jitted update: micro-batch invariance for every aggregation mode, the non-finite guard."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sspo_jax.algorithms import presets, segment_entropy_stats
from sspo_jax.algorithms.config import LOSS_AGG_MODES
from sspo_jax.models import Qwen2Config, Qwen2ForCausalLM
from sspo_jax.train.state import RolloutBatch, TrainState
from sspo_jax.train.step import Models, make_stats_fn, make_update_fn

N, P, R = 8, 4, 6
T = P + R
VOCAB = 64


@pytest.fixture(scope="module")
def policy():
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=10_000.0, tie_word_embeddings=True)
    return nnx.split(Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0)))


def _batch(models, params, alg, seed=0) -> RolloutBatch:
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, VOCAB, (N, T)), jnp.int32)
    attn = np.ones((N, T), bool)
    attn[:, :2] = rng.random((N, 2)) > 0.5  # some left padding
    resp = np.zeros((N, T), bool)
    for i in range(N):
        resp[i, P:P + rng.integers(0, R + 1)] = True  # includes empty responses
    attn = attn | resp
    attn[:, P - 1] = True
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)), params=params,
                       opt_state=None, ref_params=params)
    stats = make_stats_fn(models, alg, chunk_size=4, micro_rows=N)(state, tokens, jnp.asarray(attn),
                                                                   jnp.full((N,), P - 1, jnp.int32))
    # behaviour log-probs shifted so that ratios straddle the clip bounds
    old = stats["old_logp"] + jnp.asarray(rng.normal(size=(N, T)) * 0.3, jnp.float32)
    seg = jnp.where(jnp.asarray(resp), jnp.cumsum(jnp.asarray(resp), axis=1) // 3, -1).astype(jnp.int32)
    rm = jnp.asarray(resp)
    return RolloutBatch(tokens=tokens, attention_mask=jnp.asarray(attn), response_mask=rm, old_logp=old,
                        entropy=stats["entropy"], ref_logp=old + 0.05, segment_ids=seg,
                        advantages=jnp.asarray(np.repeat(rng.normal(size=(N, 1)), T, axis=1), jnp.float32),
                        returns=jnp.zeros((N, T)), old_values=jnp.zeros((N, T)),
                        rewards=jnp.asarray(rng.random(N), jnp.float32), last_prompt_index=jnp.full((N,), P - 1),
                        entropy_stats=segment_entropy_stats(stats["entropy"], rm, seg))


def _sgd_step(models, params, alg, batch, micro_rows):
    tx = optax.sgd(1.0)  # the parameter change is exactly minus the gradient
    # the shifted behaviour log-probs of _batch must reach the loss (they exercise the clip branches)
    update = make_update_fn(models, alg, tx, None, chunk_size=4, micro_rows=micro_rows, donate=False,
                            exact_on_policy_ratio=False)
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)), params=params,
                       opt_state=tx.init(params))
    new, metrics = update(state, batch)
    return jax.tree.map(lambda a, b: a - b, new.params, params), metrics


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_gradient_identical_for_1_2_4_micro_batches(policy, mode):
    graphdef, params = policy
    models = Models(policy=graphdef)
    alg = presets.get("sspo", loss_agg_mode=mode, kl_beta=0.01)
    batch = _batch(models, params, alg)
    ref, m1 = _sgd_step(models, params, alg, batch, micro_rows=N)
    assert float(m1["grad_norm"]) > 0
    assert float(m1["clip_frac_low"] + m1["clip_frac_high"]) > 0, "the clip branches are exercised"
    for micro in (N // 2, N // 4):
        delta, m = _sgd_step(models, params, alg, batch, micro_rows=micro)
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(delta)):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7)
        np.testing.assert_allclose(m["loss"], m1["loss"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(m["clip_frac_low"], m1["clip_frac_low"], rtol=1e-5)


def test_minibatches_and_epochs_run_the_configured_number_of_updates(policy):
    graphdef, params = policy
    models = Models(policy=graphdef)
    alg = presets.get("gspo", ppo_epochs=2, num_minibatches=2, eps_low=0.2, eps_high=0.2)
    batch = _batch(models, params, alg, seed=1)
    _, metrics = _sgd_step(models, params, alg, batch, micro_rows=2)
    assert float(metrics["updates"]) == 4 and float(metrics["skipped"]) == 0


def test_non_finite_gradient_skips_the_update_and_counts_it(policy):
    graphdef, params = policy
    models = Models(policy=graphdef)
    alg = presets.get("dapo")
    batch = _batch(models, params, alg, seed=2)
    bad = dataclasses.replace(batch, advantages=batch.advantages.at[0, P].set(jnp.nan))
    tx = optax.adamw(1e-2)
    update = make_update_fn(models, alg, tx, None, chunk_size=4, micro_rows=N, donate=False)
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)), params=params,
                       opt_state=tx.init(params))
    if not bool(bad.response_mask[0, P]):
        bad = dataclasses.replace(bad, response_mask=bad.response_mask.at[0, P].set(True))
    new, metrics = update(state, bad)
    assert float(metrics["skipped"]) == 1.0
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(new.opt_state), jax.tree.leaves(state.opt_state)):
        np.testing.assert_array_equal(a, b)
    assert int(new.step) == 1  # the iteration still counts; only the update was skipped
    good, metrics = update(state, batch)
    assert float(metrics["skipped"]) == 0.0
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(good.params), jax.tree.leaves(params)))
