"""The jitted update: micro-batch invariance for every aggregation mode, the non-finite guard,
minibatches (a partition of the rollout against one fixed old policy), the prompt critic's
prompt-only forward and critic warm-up."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sspo_jax.algorithms import losses, presets, segment_entropy_stats
from sspo_jax.algorithms.config import LOSS_AGG_MODES
from sspo_jax.models import PromptCritic, Qwen2Config, Qwen2ForCausalLM, TokenValueModel
from sspo_jax.train import optim
from sspo_jax.train.config import OptimConfig
from sspo_jax.train.state import RolloutBatch, TrainState, take_rows
from sspo_jax.train.step import Models, make_stats_fn, make_update_fn, minibatch_rows, policy_token_stats

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


def test_projecting_only_the_response_columns_changes_no_number(policy):
    """With ``prompt_width`` the stats pass and the update project only the response columns onto
    the vocabulary: the same log-probs and entropies there, the same gradient and metrics."""
    graphdef, params = policy
    models = Models(policy=graphdef)
    alg = presets.get("sspo", kl_beta=0.01)
    batch = _batch(models, params, alg, seed=3)
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)), params=params,
                       opt_state=None, ref_params=params)
    stats_fn = make_stats_fn(models, alg, chunk_size=4, micro_rows=N)
    args = (state, batch.tokens, batch.attention_mask, batch.last_prompt_index)
    full, part = stats_fn(*args), stats_fn(*args, prompt_width=P)
    for k in ("old_logp", "entropy", "ref_logp"):
        np.testing.assert_allclose(part[k][:, P:], full[k][:, P:], atol=1e-6)
        np.testing.assert_array_equal(part[k][:, :P], 0.0)
    ref, m_full = _sgd_step(models, params, alg, batch, micro_rows=N)
    delta, m_part = _sgd_step(models, params, alg, dataclasses.replace(batch, prompt_width=P), micro_rows=N)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(delta)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for k in m_full:
        np.testing.assert_allclose(m_part[k], m_full[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_non_finite_gradient_skips_the_update_and_counts_it(policy):
    graphdef, params = policy
    models = Models(policy=graphdef)
    alg = presets.get("dapo", num_minibatches=1)  # one update: the skipped one
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


# ---- minibatches: a partition of the rollout, one fixed old policy ----------------------------------

def test_minibatch_rows_partition_the_rollout_in_every_epoch():
    key = jax.random.key(3)
    seen = []
    for epoch in range(3):
        idx = np.asarray(minibatch_rows(key, epoch, 12, 4))
        assert idx.shape == (4, 3) and idx.dtype == np.int32
        np.testing.assert_array_equal(np.sort(idx.ravel()), np.arange(12))  # every row exactly once
        seen.append(idx)
    assert not np.array_equal(seen[0], seen[1]), "each epoch reshuffles"
    np.testing.assert_array_equal(np.asarray(minibatch_rows(key, 0, 12, 1)), np.arange(12)[None])


@pytest.fixture(scope="module")
def small_policy():
    """One layer: these tests compile several updates, and compile time grows with the layers."""
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, rope_theta=10_000.0, tie_word_embeddings=True)
    return nnx.split(Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0)))


def _reference_updates(models, alg, params0, batch, lr):
    """Plain-Python PPO epochs x minibatches with SGD: the rows of `minibatch_rows`, the first
    minibatch on-policy (exact ratio), every other one against ``batch.old_logp``; and the buggy
    variant whose old log-probs are recomputed from the current parameters. Returns both."""
    logp_fn = jax.jit(lambda p, mb: policy_token_stats(models.policy, p, mb.tokens, mb.attention_mask, 4, False)[0])

    @functools.partial(jax.jit, static_argnames="on_policy")
    def sgd_step(p, mb, old, on_policy):
        def loss(p):
            logp = logp_fn(p, mb)
            out = losses.policy_loss(alg, logp, jax.lax.stop_gradient(logp) if on_policy else old, mb.advantages,
                                     mb.response_mask, segment_ids=mb.segment_ids, entropy_stats=mb.entropy_stats)
            return out.loss_sum / jnp.maximum(out.denominator, 1.0)

        return jax.tree.map(lambda a, d: a - lr * d, p, jax.grad(loss)(p))

    shuffle_key = jax.random.split(jax.random.key(0))[1]  # as make_update_fn splits the state's key
    out = []
    for refresh_old in (False, True):
        params = params0
        for epoch in range(alg.ppo_epochs):
            idx = minibatch_rows(shuffle_key, epoch, N, alg.num_minibatches)
            for j in range(alg.num_minibatches):
                mb = take_rows(batch, idx[j])
                old = logp_fn(params, mb) if refresh_old else mb.old_logp
                params = sgd_step(params, mb, old, on_policy=epoch == 0 and j == 0)
        out.append(params)
    return out


def test_minibatches_use_each_row_once_and_the_stats_pass_old_logprobs(small_policy):
    graphdef, params = small_policy
    models = Models(policy=graphdef)
    alg = presets.get("dapo", num_minibatches=2, ppo_epochs=2)
    batch = _batch(models, params, alg, seed=3)
    lr = 0.1
    tx = optax.sgd(lr)
    update = make_update_fn(models, alg, tx, None, chunk_size=4, micro_rows=N // 2, donate=False)
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)), params=params,
                       opt_state=tx.init(params))
    new, metrics = update(state, batch)
    assert float(metrics["updates"]) == 4 and float(metrics["skipped"]) == 0  # epochs x minibatches updates
    want, stale = _reference_updates(models, alg, params, batch, lr)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # the check can fail: old log-probs refreshed between minibatches give other parameters
    assert any(not np.allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
               for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(stale)))


# ---- critics: the prompt critic reads the prompt columns only; critic warm-up ------------------------

_CRITIC_CFG = Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, rope_theta=10_000.0, tie_word_embeddings=True)
_WIDTHS: list[int] = []


class _WidthSpyCritic(PromptCritic):
    """A prompt critic that records the width of every forward it is traced with."""

    def __call__(self, tokens, attention_mask=None, **kw):
        _WIDTHS.append(int(tokens.shape[1]))
        return super().__call__(tokens, attention_mask, **kw)


def test_prompt_critic_runs_over_the_prompt_columns_and_gives_the_full_row_logit(small_policy):
    graphdef, params = small_policy
    critic_gd, critic_params = nnx.split(_WidthSpyCritic(_CRITIC_CFG, rngs=nnx.Rngs(1), head_init_std=0.5))
    models = Models(policy=graphdef, critic=critic_gd, critic_kind="prompt")
    alg = presets.get("sppo", num_minibatches=1)
    batch = dataclasses.replace(_batch(Models(policy=graphdef), params, presets.get("dapo")), prompt_width=P)
    full = jax.jit(lambda cp, b: nnx.merge(critic_gd, cp)(b.tokens, b.attention_mask,
                                                          last_prompt_index=b.last_prompt_index))(critic_params, batch)
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)), params=params,
                       opt_state=None, critic_params=critic_params)
    stats = make_stats_fn(models, alg, chunk_size=4, micro_rows=N)
    _WIDTHS.clear()
    sliced = stats(state, batch.tokens, batch.attention_mask, batch.last_prompt_index, prompt_width=P)["critic"]
    assert _WIDTHS == [P], "the critic's forward covers the prompt columns only"
    np.testing.assert_allclose(np.asarray(sliced), np.asarray(full), rtol=1e-5, atol=1e-6)
    other = batch.tokens.at[:, P:].set((batch.tokens[:, P:] + 7) % VOCAB)  # other responses: the same logit
    again = stats(state, other, batch.attention_mask, batch.last_prompt_index, prompt_width=P)["critic"]
    np.testing.assert_array_equal(np.asarray(again), np.asarray(sliced))
    # the update's critic loss reads the same sliced forward
    ctx = optax.sgd(1.0)
    update = make_update_fn(models, alg, optax.sgd(0.0), ctx, chunk_size=4, micro_rows=N, donate=False)
    _WIDTHS.clear()
    _, metrics = update(state.replace(opt_state=optax.sgd(0.0).init(params), critic_opt_state=ctx.init(critic_params)),
                        batch)
    assert set(_WIDTHS) == {P}
    np.testing.assert_allclose(float(metrics["critic_loss"]), float(losses.bce_critic_loss(full, batch.rewards)[0]
                                                                    / losses.bce_critic_loss(full, batch.rewards)[1]),
                               rtol=1e-5)


def test_critic_warmup_updates_only_the_critic_for_the_first_steps(small_policy):
    graphdef, params = small_policy
    critic_gd, critic_params = nnx.split(TokenValueModel(_CRITIC_CFG, rngs=nnx.Rngs(2)))
    models = Models(policy=graphdef, critic=critic_gd, critic_kind="token")
    alg = presets.get("ppo", critic_warmup_steps=1)
    batch = _batch(Models(policy=graphdef), params, presets.get("dapo"), seed=4)
    batch = dataclasses.replace(batch, returns=jnp.where(batch.response_mask, 1.0, 0.0))
    tx = optim.make_optimizer(OptimConfig(lr=1e-2), total_updates=4)
    ctx = optim.make_optimizer(OptimConfig(lr=1e-2, critic_lr=1e-2), total_updates=4, critic=True)
    update = make_update_fn(models, alg, tx, ctx, chunk_size=4, micro_rows=N, donate=False)
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)), params=params,
                       opt_state=tx.init(params), critic_params=critic_params, critic_opt_state=ctx.init(critic_params))

    def same(a, b):
        return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    warm, metrics = update(state, batch)  # state.step 0 < 1: the critic only
    assert float(metrics["skipped"]) == 0 and float(metrics["grad_norm"]) > 0
    assert same(warm.params, state.params) and same(warm.opt_state, state.opt_state)
    assert not same(warm.critic_params, state.critic_params)
    after, _ = update(warm, batch)  # state.step 1: both
    assert not same(after.params, warm.params) and not same(after.critic_params, warm.critic_params)
    # the policy's schedule starts at its first update (the trainer logs lr(schedule_count) before each step)
    assert optim.schedule_count(warm.opt_state) == 0 and optim.schedule_count(after.opt_state) == 1
    assert optim.schedule_count(after.critic_opt_state) == 2


@pytest.mark.parametrize("kind", ["token", "prompt"])
def test_critic_gradient_identical_for_1_2_4_micro_batches(small_policy, kind):
    """The policy's and the critic's sums start from the first micro-batch and add the others
    (a scan only when there are several): the same SGD step for any micro-batch count."""
    graphdef, params = small_policy
    critic = (TokenValueModel(_CRITIC_CFG, rngs=nnx.Rngs(2)) if kind == "token" else
              PromptCritic(_CRITIC_CFG, rngs=nnx.Rngs(2), head_init_std=0.5))
    critic_gd, critic_params = nnx.split(critic)
    models = Models(policy=graphdef, critic=critic_gd, critic_kind=kind)
    alg = presets.get("ppo" if kind == "token" else "sppo", num_minibatches=1)
    batch = _batch(Models(policy=graphdef), params, presets.get("dapo"), seed=5)
    batch = dataclasses.replace(batch, returns=jnp.where(batch.response_mask, 0.5, 0.0),
                                rewards=jnp.arange(N, dtype=jnp.float32) % 2)
    tx, ctx = optax.sgd(1.0), optax.sgd(1.0)
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)), params=params,
                       opt_state=tx.init(params), critic_params=critic_params, critic_opt_state=ctx.init(critic_params))
    results = []
    for micro in (N, N // 2, N // 4):
        update = make_update_fn(models, alg, tx, ctx, chunk_size=4, micro_rows=micro, donate=False)
        new, metrics = update(state, batch)
        results.append((jax.tree.leaves((new.params, new.critic_params)), metrics))
    (ref, m_ref), others = results[0], results[1:]
    assert float(m_ref["critic_grad_norm"]) > 0 and float(m_ref["grad_norm"]) > 0
    for leaves, metrics in others:
        for a, b in zip(ref, leaves):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
        for k in ("loss", "grad_norm", "critic_loss", "critic_grad_norm"):
            np.testing.assert_allclose(float(metrics[k]), float(m_ref[k]), rtol=1e-5, err_msg=k)
