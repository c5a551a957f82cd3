"""bf16 training: bf16 parameters for every preset, fp32 master weights with bf16 compute, the
optimizer moment dtype, the exact on-policy ratio, the lean stats pass, and resume in bf16."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sspo_jax.algorithms import presets, segment_entropy_stats
from sspo_jax.errors import ConfigError
from sspo_jax.models import Qwen2Config, Qwen2ForCausalLM
from sspo_jax.train import Trainer, optim
from sspo_jax.train.config import OptimConfig, load_config
from sspo_jax.train.logging_io import read_metrics
from sspo_jax.train.prepare import batch_metrics
from sspo_jax.train.state import RolloutBatch, TrainState
from sspo_jax.train.step import (ONPOLICY_BATCH_METRICS, Models, make_stats_fn, make_update_fn, needs_policy_stats,
                                 policy_token_stats)
from tests.train.train_fixtures import digit_share_config, fast_config, make_checkpoint

N, P, R, VOCAB = 8, 4, 8, 64
T = P + R
FAST_PRESETS = ("dapo", "ppo")  # the others are slow-marked (test_train_loop covers them in fp32)




@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tiny_bf16") / "model")


def _cfg(model_dir, preset, run_dir, *extra, steps=1):
    return digit_share_config(model_dir, preset, run_dir, *extra, steps=steps)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _float_leaves(tree):
    return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]


def _train(cfg):
    trainer = Trainer(cfg, echo=lambda s: None)
    before = _leaves(trainer.state.params)
    try:
        trainer.run()
    finally:
        trainer.close()
    return trainer, before


@pytest.mark.parametrize("preset", [p if p in FAST_PRESETS else pytest.param(p, marks=pytest.mark.slow)
                                    for p in presets.names()])
def test_bf16_params_train_one_step_for_every_preset(model_dir, tmp_path, preset):
    trainer, before = _train(_cfg(model_dir, preset, tmp_path / "run", "model.dtype=bfloat16",
                                  "checkpoint.enabled=false"))
    after = trainer.state.params
    assert {x.dtype for x in jax.tree.leaves(after)} == {jnp.dtype(jnp.bfloat16)}
    assert all(np.all(np.isfinite(np.asarray(a, np.float32))) for a in jax.tree.leaves(after))
    assert any(not np.array_equal(a, b) for a, b in zip(before, _leaves(after))), "the policy must change"
    assert {x.dtype for x in _float_leaves(trainer.state.opt_state)} == {jnp.dtype(jnp.float32)}  # the default
    if trainer.state.critic_params is not None:
        assert {x.dtype for x in jax.tree.leaves(trainer.state.critic_params)} == {jnp.dtype(jnp.bfloat16)}
    (record,) = read_metrics(tmp_path / "run")
    assert record["skipped_updates"] == 0
    assert all(not isinstance(v, str) for v in record.values()), "every metric is finite"


def test_fp32_master_weights_with_bf16_compute(model_dir, tmp_path):
    trainer, before = _train(_cfg(model_dir, "dapo", tmp_path / "run", "model.compute_dtype=bfloat16",
                                  "checkpoint.enabled=false", "algorithm.num_minibatches=1"))
    after = trainer.state.params
    assert {x.dtype for x in jax.tree.leaves(after)} == {jnp.dtype(jnp.float32)}
    assert all(np.all(np.isfinite(a)) for a in _leaves(after))
    assert any(not np.array_equal(a, b) for a, b in zip(before, _leaves(after)))
    (record,) = read_metrics(tmp_path / "run")
    assert record["skipped_updates"] == 0
    # one on-policy update: the loss's ratios are exactly 1 although the passes differ in bf16
    assert record["policy/ratio_min"] == record["policy/ratio_max"] == 1.0


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("moment", ["float32", "bfloat16", None])
def test_moment_dtype_knob_sets_the_optimizer_state_dtypes(param_dtype, moment):
    params = {"w": jnp.ones((4, 3), param_dtype), "b": jnp.zeros((3,), param_dtype)}
    tx = optim.make_optimizer(OptimConfig(lr=1e-2, moment_dtype=moment, weight_decay=0.1), total_updates=4)
    state = tx.init(params)
    want = jnp.dtype(moment or param_dtype)
    assert {x.dtype for x in _float_leaves(state)} == {want}
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, jnp.float32), params)  # fp32 like the update's
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    assert {x.dtype for x in _float_leaves(new_state)} == {want}
    new = optax.apply_updates(params, updates)
    assert all(a.dtype == jnp.dtype(param_dtype) for a in jax.tree.leaves(new))
    assert float(jnp.max(jnp.abs(new["b"].astype(jnp.float32)))) > 0


def test_moment_dtype_is_validated_naming_the_key():
    with pytest.raises(ConfigError, match="optim.moment_dtype"):
        OptimConfig(moment_dtype="float16")
    with pytest.raises(ConfigError, match="optim.moment_dtype"):
        load_config(None, ["optim.moment_dtype=float16"])
    assert load_config(None, ["optim.moment_dtype=null"]).optim.moment_dtype is None


# ---- the exact on-policy ratio ---------------------------------------------------------------

@pytest.fixture(scope="module")
def bf16_policy():
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=10_000.0, tie_word_embeddings=True)
    return nnx.split(Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0), param_dtype=jnp.float32, compute_dtype=jnp.bfloat16))


def _state(params, tx=None):
    return TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)), params=params,
                      opt_state=tx.init(params) if tx is not None else None)


def _onpolicy_batch(models, params, alg, seed=0):
    """A batch whose old log-probs are the stats pass's (micro-batches of 2 rows, as a trainer would)."""
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, VOCAB, (N, T)), jnp.int32)
    attn = jnp.ones((N, T), bool)
    resp = np.zeros((N, T), bool)
    for i in range(N):
        resp[i, P:P + rng.integers(2, R + 1)] = True
    rm = jnp.asarray(resp)
    stats = make_stats_fn(models, alg, chunk_size=4, micro_rows=2)(_state(params), tokens, attn,
                                                                   jnp.full((N,), P - 1, jnp.int32))
    seg = jnp.where(rm, 0, -1).astype(jnp.int32)
    adv = jnp.asarray(np.repeat(rng.normal(size=(N, 1)), T, axis=1), jnp.float32)
    zeros = jnp.zeros((N, T), jnp.float32)
    batch = RolloutBatch(tokens=tokens, attention_mask=attn, response_mask=rm, old_logp=stats["old_logp"],
                         entropy=stats["entropy"], ref_logp=zeros, segment_ids=seg, advantages=adv, returns=zeros,
                         old_values=zeros, rewards=jnp.zeros((N,)), last_prompt_index=jnp.full((N,), P - 1),
                         entropy_stats=segment_entropy_stats(stats["entropy"], rm, seg))
    return batch, stats


def _sgd(models, alg, params, batch, **kw):
    tx = optax.sgd(1.0)  # the parameter change is minus the gradient
    update = make_update_fn(models, alg, tx, None, chunk_size=4, micro_rows=N, donate=False, **kw)
    new, metrics = update(_state(params, tx), batch)
    return jax.tree.map(lambda a, b: a - b, new.params, params), metrics


def test_onpolicy_ratio_is_exactly_one_in_bf16_and_the_gradient_is_reinforce(bf16_policy):
    graphdef, params = bf16_policy
    models = Models(policy=graphdef)
    alg = presets.get("gspo", num_minibatches=1)  # GSPO's bounds (~4e-4) clip by bf16 numerics alone
    batch, _ = _onpolicy_batch(models, params, alg)
    # In a real model the stats pass and the update round differently in bf16 (measured: up to 0.1
    # in log-prob); this tiny one happens to agree, so perturb the stats pass's log-probs by that much.
    noise = jnp.asarray(np.random.default_rng(1).normal(size=(N, T)) * 0.02, jnp.float32)
    batch = dataclasses.replace(batch, old_logp=batch.old_logp + noise)
    _, loose = _sgd(models, alg, params, batch, exact_on_policy_ratio=False)
    assert float(loose["onpolicy_ratio_dev_max"]) > 1e-2
    assert float(loose["clip_frac_low"]) + float(loose["clip_frac_high"]) > 0.1, "GSPO clips by numerics alone"
    delta, exact = _sgd(models, alg, params, batch)
    assert float(exact["ratio_min"]) == float(exact["ratio_max"]) == float(exact["ratio_mean"]) == 1.0
    assert float(exact["clip_frac_low"]) == float(exact["clip_frac_high"]) == 0.0
    assert float(exact["onpolicy_ratio_dev_max"]) == float(loose["onpolicy_ratio_dev_max"])

    valid = batch.response_mask
    n_tok = jnp.sum(valid, axis=1)

    def reinforce(p):  # GSPO at ratio 1: -mean over rows of A_i * mean_t logp  (seq-mean-token-mean)
        logp, _ = policy_token_stats(graphdef, p, batch.tokens, batch.attention_mask, 4, False)
        per_row = jnp.sum(jnp.where(valid, logp, 0.0), axis=1) / n_tok
        return -jnp.mean(batch.advantages[:, 0] * per_row)

    want = jax.tree.map(lambda g: -g, jax.grad(reinforce)(params))
    for a, b in zip(jax.tree.leaves(delta), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=1e-6)


def test_lean_stats_pass_when_nothing_needs_the_old_logprobs(bf16_policy):
    graphdef, params = bf16_policy
    models = Models(policy=graphdef)
    one_update_dapo = presets.get("dapo", num_minibatches=1)  # the preset itself makes 16 updates per batch
    assert not needs_policy_stats(one_update_dapo, True)
    assert needs_policy_stats(presets.get("dapo"), True)
    assert not needs_policy_stats(presets.get("grpo"), True)  # its KL reference is computed regardless
    assert needs_policy_stats(one_update_dapo, False)
    assert needs_policy_stats(presets.get("ppo", kl_in_reward_beta=0.01), True)  # the KL in the reward reads old_logp
    assert needs_policy_stats(presets.get("sspo"), True)  # entropy-scaled bounds need the entropy first
    assert needs_policy_stats(presets.get("gspo"), True)  # 4 minibatches: the later ones are off-policy
    with pytest.raises(ValueError, match="old_logp_from_sampler"):
        make_update_fn(models, presets.get("sspo"), optax.sgd(1.0), None, chunk_size=4, micro_rows=N,
                       old_logp_from_sampler=True)

    alg = one_update_dapo
    batch, stats = _onpolicy_batch(models, params, alg)
    lean = make_stats_fn(models, alg, chunk_size=4, micro_rows=2, policy_stats=False)(
        _state(params), batch.tokens, batch.attention_mask, batch.last_prompt_index)
    assert "old_logp" not in lean and "entropy" not in lean
    sampler = stats["old_logp"] + jnp.where(batch.response_mask, 0.01, 0.0)  # a sampler that drifts by 0.01
    ref_delta, _ = _sgd(models, alg, params, batch)
    lean_batch = dataclasses.replace(batch, old_logp=sampler, entropy=jnp.zeros((N, T)))
    delta, metrics = _sgd(models, alg, params, lean_batch, old_logp_from_sampler=True)
    for a, b in zip(jax.tree.leaves(delta), jax.tree.leaves(ref_delta)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)  # old_logp is not read
    host = batch_metrics(batch.response_mask, batch.advantages, stats["old_logp"], stats["entropy"],
                         np.asarray(sampler))
    assert set(ONPOLICY_BATCH_METRICS) <= set(metrics) and "onpolicy_ratio_dev_max" not in metrics
    # the update's bf16 forward against the stats pass's: equal up to the numerics of two forwards
    np.testing.assert_allclose(float(metrics["old_entropy_mean"]), host["old_entropy_mean"], rtol=2e-2)
    assert abs(float(metrics["sampler_logp_abs_diff"]) - host["sampler_logp_abs_diff"]) < 0.05
    assert float(metrics["sampler_logp_abs_diff_max"]) >= float(metrics["sampler_logp_abs_diff"]) > 0


# ---- checkpoint / resume in bf16 -------------------------------------------------------------

@pytest.mark.parametrize("moment", ["bfloat16", pytest.param("float32", marks=pytest.mark.slow)])
def test_resume_in_bf16_equals_uninterrupted(model_dir, tmp_path, moment):
    extra = ("model.dtype=bfloat16", f"optim.moment_dtype={moment}", "algorithm.num_minibatches=2")  # 2 updates suffice
    straight, _ = _train(_cfg(model_dir, "dapo", tmp_path / "a", *extra, steps=2))
    _train(_cfg(model_dir, "dapo", tmp_path / "b", *extra, steps=1))
    resumed = Trainer(_cfg(model_dir, "dapo", tmp_path / "b", *extra, steps=2), echo=lambda s: None)
    assert resumed.start_step == 1
    assert {x.dtype for x in _float_leaves(resumed.state.opt_state)} == {jnp.dtype(moment)}
    assert {x.dtype for x in jax.tree.leaves(resumed.state.params)} == {jnp.dtype(jnp.bfloat16)}
    try:
        resumed.run()
    finally:
        resumed.close()
    for a, b in zip(_leaves(straight.state.params), _leaves(resumed.state.params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(straight.state.opt_state), _leaves(resumed.state.opt_state)):
        np.testing.assert_array_equal(a, b)


def test_an_update_whose_new_parameters_overflow_is_skipped(tmp_path):
    """lr = 1e39 is a finite number in the config but overflows float32: the update would make every
    parameter infinite, so it is skipped and counted like a non-finite gradient."""
    from sspo_jax.train import Trainer

    model_dir = make_checkpoint(tmp_path / "model")
    trainer = Trainer(fast_config(model_dir, "grpo", tmp_path / "run", "optim.lr=1e39", "checkpoint.enabled=false",
                                  "eval.enabled=false", steps=1), echo=lambda s: None)
    try:
        before = [np.asarray(x) for x in jax.tree.leaves(trainer.state.params)]
        metrics = trainer.step(1)
        after = [np.asarray(x) for x in jax.tree.leaves(trainer.state.params)]
    finally:
        trainer.close()
    assert metrics["skipped_updates"] == metrics["updates"] == 1.0
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
