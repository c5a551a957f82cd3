"""No NaN or inf anywhere: all-equal reward groups, zero-length and EOS-first responses,
all-truncated batches, extreme log-ratios, bf16 compute; and the non-finite guard skips, counts
and recovers. Pure loss functions for every preset first, then real update steps."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sspo_jax.algorithms import advantages as adv_lib
from sspo_jax.algorithms import policy_loss, presets, segment_ids
from sspo_jax.algorithms.config import LOSS_AGG_MODES
from sspo_jax.rewards import RewardConfig
from sspo_jax.train import Trainer
from sspo_jax.train import prepare
from sspo_jax.train.config import LoopConfig
from sspo_jax.train.logging_io import read_metrics
from tests.reliability.conftest import leaves, run_config

B, T, V = 6, 10, 16
DELIMS = jnp.zeros((V,), bool).at[3].set(True)
POLICY_PRESETS = presets.names()


def _finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def _loss_and_grad(cfg, logp, old_logp, adv, mask, tokens):
    seg = segment_ids(tokens, mask, DELIMS, cfg.segmentation)
    entropy = jnp.full((B, T), 0.7, jnp.float32)
    ref = old_logp - 0.05

    def f(lp):
        out = policy_loss(cfg, lp, old_logp, adv, mask, segment_ids=seg, entropy=entropy, ref_logp=ref,
                          rng=jax.random.key(0))  # Clip-Cov draws its tokens with a key
        return out.loss_sum, out

    (s, out), g = jax.value_and_grad(f, has_aux=True)(logp)
    return s, out, g


def _inputs(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    tokens = jax.random.randint(k1, (B, T), 0, V)
    logp = -jax.random.uniform(k2, (B, T), minval=0.1, maxval=5.0)
    old = logp + 0.1 * jax.random.normal(k3, (B, T))
    mask = jnp.zeros((B, T), bool).at[:, 3:].set(True)  # 3 prompt columns, 7 response columns
    return tokens, logp, old, mask


# ---- pure functions ------------------------------------------------------------------------

def test_all_equal_reward_groups_give_exactly_zero_advantages():
    groups = np.array([[0.3] * 4, [np.float32(0.1) + np.float32(0.2)] * 4, [1e6] * 4, [0.0] * 4,
                       [1.0, 1.0, 1.0, 1.0 + 1e-9], [0.0, 1.0, 0.0, 1.0]], np.float32)
    rewards = jnp.asarray(groups.ravel())
    z, zero_frac = adv_lib.group_zscore(rewards, 4)
    for a in (z, adv_lib.group_mean(rewards, 4), adv_lib.rloo(rewards, 4)):
        a = np.asarray(a).reshape(6, 4)
        assert np.all(np.isfinite(a))
        np.testing.assert_array_equal(a[:5], 0.0)  # exactly 0, not a float residue blown up by 1/(std+eps)
        assert np.all(a[5] != 0)
    assert float(zero_frac) == pytest.approx(5 / 6)


@pytest.mark.parametrize("preset", POLICY_PRESETS)
def test_zero_advantages_give_zero_loss_and_gradient(preset):
    # the KL term alone is not zero, nor KL-Cov's penalty on its selected tokens
    cfg = presets.get(preset, kl_beta=0.0, **({"kl_cov_coef": 0.0} if preset == "kl_cov" else {}))
    tokens, logp, old, mask = _inputs()
    s, out, g = _loss_and_grad(cfg, logp, old, jnp.zeros((B,)), mask, tokens)
    assert _finite((s, out.metrics, g))
    assert float(s) == 0.0 and float(jnp.abs(g).max()) == 0.0


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("preset", POLICY_PRESETS)
def test_zero_length_and_eos_first_responses_are_finite(preset, mode):
    cfg = presets.get(preset, loss_agg_mode=mode)
    tokens, logp, old, mask = _inputs(1)
    mask = mask.at[0].set(False)  # no response token at all
    mask = mask.at[1].set(False).at[1, 3].set(True)  # EOS first: the stop token is the whole response
    adv = jnp.array([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    s, out, g = _loss_and_grad(cfg, logp, old, adv, mask, tokens)
    assert _finite((s, out.denominator, out.metrics, g))
    assert float(jnp.abs(g[0]).max()) == 0.0, "a row without response tokens gets no gradient"
    # a batch in which nothing is trained (all truncated and masked, or all empty)
    s, out, g = _loss_and_grad(cfg, logp, old, adv, jnp.zeros((B, T), bool), tokens)
    assert _finite((s, out.denominator, out.metrics, g))
    assert float(s) == 0.0 and float(out.loss) == 0.0 and float(jnp.abs(g).max()) == 0.0


@pytest.mark.parametrize("shift", [1e4, -1e4, 1e30, -1e30])
@pytest.mark.parametrize("preset", POLICY_PRESETS)
def test_extreme_log_ratios_are_clamped_and_finite(preset, shift):
    cfg = presets.get(preset)
    tokens, logp, old, mask = _inputs(2)
    old = old.at[::2].add(shift)  # every other row: log-ratio of about -shift
    adv = jnp.array([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    s, out, g = _loss_and_grad(cfg, logp, old, adv, mask, tokens)
    assert _finite((s, out.denominator, out.metrics, g)), out.metrics
    assert float(out.metrics["ratio_max"]) <= float(np.exp(cfg.log_ratio_clamp)) * (1 + 1e-5)


@pytest.mark.parametrize("preset", ["sspo", "grpo", "gspo"])
def test_bf16_log_probs_are_finite(preset):
    cfg = presets.get(preset)
    tokens, logp, old, mask = _inputs(3)
    adv = jnp.array([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    s, out, g = _loss_and_grad(cfg, logp.astype(jnp.bfloat16), old.astype(jnp.bfloat16), adv, mask, tokens)
    assert _finite((s, out.metrics, g)) and out.loss_sum.dtype == jnp.float32


# ---- real update steps (one compiled trainer shared by the suite) --------------------------------

def _step_is_finite(metrics):
    bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
    assert not bad, bad
    assert metrics["skipped_updates"] == 0


def test_groups_with_all_equal_rewards_train_on_nothing_and_stay_finite(live_trainer, monkeypatch):
    trainer = live_trainer  # a random model never answers in \boxed{}: every math reward is 0
    monkeypatch.setattr(trainer, "cfg", trainer.cfg.replace(rewards=RewardConfig(weights={"math": 1.0}, workers=0)))
    metrics = trainer.step(1)
    _step_is_finite(metrics)
    assert metrics["zero_variance_group_frac"] == 1.0
    assert metrics["advantage/min"] == metrics["advantage/max"] == 0.0
    assert metrics["policy/grad_norm"] == 0.0


def test_eos_first_responses_train_without_nan(live_trainer, monkeypatch):
    trainer = live_trainer  # every token stops generation: each response is its stop token alone
    vocab = trainer.model_config.vocab_size
    monkeypatch.setattr(trainer, "sampling", trainer.sampling.replace(eos_token_ids=tuple(range(vocab))))
    metrics = trainer.step(1)
    _step_is_finite(metrics)
    assert metrics["response_length/max"] == 1.0 and metrics["truncated_frac"] == 0.0


def _staged_update(trainer, *, alg=None, edit_scored=lambda r: r, edit_batch=lambda b: b):
    """One RL step through the stage functions (collect -> prepare -> update), with the scored rows
    and the device batch edited on the way; returns (scored rows, update metrics as floats)."""
    alg = alg or trainer.cfg.algorithm
    key, _ = jax.random.split(jax.random.fold_in(trainer.state.key, 17))
    scored = edit_scored(trainer.collect(key)[0])
    batch, _ = prepare.prepare_batch(scored, trainer.state, prepare.PrepareFns(trainer.stats_fn, trainer.segment_fn),
                                     trainer.rows, alg)
    trainer.state, upd = trainer.update_fn(trainer.state, edit_batch(batch))
    return scored, {k: float(v) for k, v in upd.items()}


def test_all_truncated_batch_with_masked_truncation_is_finite(live_trainer):
    trainer = live_trainer
    scored, upd = _staged_update(trainer, alg=trainer.cfg.algorithm.replace(mask_truncated=True),
                                 edit_scored=lambda r: dataclasses.replace(r, truncated=np.ones_like(r.truncated)))
    assert all(np.isfinite(v) for v in upd.values()), upd
    assert float(scored.truncated.mean()) == 1.0
    assert upd["loss"] == 0.0 and upd["grad_norm"] == 0.0


def test_extreme_log_ratios_in_a_real_update_are_clamped(live_trainer):
    trainer = live_trainer

    def shift(batch):
        big = jnp.where(jnp.arange(batch.old_logp.shape[0])[:, None] % 2 == 0, 1e4, -1e4)
        return dataclasses.replace(batch, old_logp=batch.old_logp + big)

    before = leaves(trainer.state.params)
    _, upd = _staged_update(trainer, edit_batch=shift)
    assert all(np.isfinite(v) for v in upd.values()), upd
    after = leaves(trainer.state.params)
    assert all(np.all(np.isfinite(a)) for a in after)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))


def test_non_finite_guard_skips_counts_and_recovers(live_trainer, monkeypatch):
    trainer = live_trainer
    real_update = trainer.update_fn
    calls = {"n": 0}

    def update(state, batch):  # the first step's update is poisoned, the second is not
        calls["n"] += 1
        if calls["n"] == 1:
            batch = dataclasses.replace(batch, advantages=batch.advantages * jnp.nan)
        return real_update(state, batch)

    monkeypatch.setattr(trainer, "update_fn", update)
    monkeypatch.setattr(trainer, "cfg", trainer.cfg.replace(train=LoopConfig(steps=2, max_consecutive_skips=2)))
    monkeypatch.setattr(trainer, "start_step", 0)
    before = leaves(trainer.state.params)
    opt_before = leaves(trainer.state.opt_state)
    params_after_skip = {}
    real_step = trainer.step

    def step(k):
        out = real_step(k)
        if k == 1:
            params_after_skip["p"] = leaves(trainer.state.params)
            params_after_skip["o"] = leaves(trainer.state.opt_state)
        return out

    monkeypatch.setattr(trainer, "step", step)
    trainer.run()
    for a, b in zip(before, params_after_skip["p"]):
        np.testing.assert_array_equal(a, b)  # the skipped update changed nothing
    for a, b in zip(opt_before, params_after_skip["o"]):
        np.testing.assert_array_equal(a, b)
    first, second = read_metrics(trainer.run_dir)[-2:]
    assert first["step"] == 1 and first["skipped_updates"] == first["updates"] >= 1
    assert first["consecutive_skipped_steps"] == 1.0
    assert second["skipped_updates"] == 0 and second["consecutive_skipped_steps"] == 0.0
    assert all(np.all(np.isfinite(a)) for a in leaves(trainer.state.params))
    assert any(not np.array_equal(a, b) for a, b in zip(before, leaves(trainer.state.params)))


def test_bf16_compute_trains_without_nan(model_dir, tmp_path):
    trainer = Trainer(run_config(model_dir, tmp_path / "run", "model.compute_dtype=bfloat16", steps=2),
                      echo=lambda s: None)
    before = leaves(trainer.state.params)
    try:
        trainer.run()
    finally:
        trainer.close()
    after = leaves(trainer.state.params)
    assert all(a.dtype == np.float32 and np.all(np.isfinite(a)) for a in after)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    for record in read_metrics(tmp_path / "run"):
        assert not [k for k, v in record.items() if isinstance(v, str)], record  # NaN/inf are logged as strings
        assert record["skipped_updates"] == 0
