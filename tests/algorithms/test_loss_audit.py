"""Issue 22 audit: the sg form past the log-ratio clamp, the KL estimators' clamp and gradients,
and segment ids that contradict the configured granularity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sspo_jax.algorithms import kl_penalty, policy_loss, presets, segment_ids

from .batches import random_batch, toy_table


def _grad(cfg, logp, old, adv, mask, seg=None):
    return jax.grad(lambda lp: policy_loss(cfg, lp, old, adv, mask, segment_ids=seg).loss)(logp)


@pytest.mark.parametrize("form", ["sg", "broadcast"])
def test_no_gradient_past_the_clamp_in_either_form(form):
    """Row 0's mean log-ratio (25) is past the +-20 clamp and A < 0 selects the unclipped branch:
    its gradient is exactly 0 (the sg form used to pass rho = e^20 there); row 1 is inside."""
    cfg = presets.get("gspo", ratio_form=form)
    old = jnp.zeros((2, 4))
    logp = jnp.asarray([[25.0, 25.0, 25.0, 25.0], [1e-4, -2e-4, 1e-4, 0.0]])
    mask = jnp.ones((2, 4), bool)
    g = np.asarray(_grad(cfg, logp, old, jnp.asarray([-1.0, -1.0]), mask))
    assert np.all(np.isfinite(g)) and np.all(g[0] == 0) and np.all(g[1] != 0)


def test_sg_and_broadcast_gradients_agree_past_and_inside_the_clamp_for_constant_advantages():
    cfg = presets.get("gspo", log_ratio_clamp=0.5)
    batch = random_batch(3, scale=1.0)
    args = (jnp.asarray(batch.old_logp), jnp.asarray(batch.adv), jnp.asarray(batch.mask))
    means = [(batch.logp - batch.old_logp)[i][batch.mask[i]].mean() for i in range(5)]
    assert any(abs(m) > 0.5 for m in means) and any(abs(m) < 0.5 for m in means)  # both regimes
    g_sg = _grad(cfg.replace(ratio_form="sg"), jnp.asarray(batch.logp), *args)
    g_bc = _grad(cfg.replace(ratio_form="broadcast"), jnp.asarray(batch.logp), *args)
    np.testing.assert_allclose(g_sg, g_bc, rtol=1e-5, atol=1e-8)


def test_only_k3_clamps():
    lp, ref = jnp.asarray([[-40.0, 0.0]]), jnp.asarray([[0.0, -30.0]])  # d = ref - lp = 40, -30
    d = np.asarray(ref - lp)
    np.testing.assert_allclose(kl_penalty(lp, ref, "k1"), -d)
    np.testing.assert_allclose(kl_penalty(lp, ref, "k2"), 0.5 * d**2)
    c = np.clip(d, -20, 20)
    np.testing.assert_allclose(kl_penalty(lp, ref, "k3"), np.exp(c) - c - 1, rtol=1e-6)
    grads = {e: np.asarray(jax.grad(lambda x, e=e: jnp.sum(kl_penalty(x, ref, e)))(lp)) for e in ("k1", "k2", "k3")}
    np.testing.assert_allclose(grads["k1"], [[1.0, 1.0]])
    np.testing.assert_allclose(grads["k2"], -d)
    np.testing.assert_array_equal(grads["k3"], 0.0)  # past its clamp, as verl's low_var_kl


def test_k3_as_a_loss_has_the_forward_kl_gradient_and_k2_the_reverse():
    """Exact expectations over a categorical policy pi = softmax(theta), tokens y ~ pi:
    E[grad k3] = grad KL(pi_ref || pi) (forward), E[grad k2] = grad KL(pi || pi_ref) (reverse)."""
    theta = jnp.asarray([0.3, -1.2, 0.8, 0.0, -0.4])
    log_ref = jax.nn.log_softmax(jnp.asarray([1.0, 0.2, -0.5, 0.4, -1.0]))
    pi = jax.nn.softmax(theta)

    def expected_grad(est):
        per_y = jax.jacobian(lambda th: kl_penalty(jax.nn.log_softmax(th)[None], log_ref[None], est)[0])(theta)
        return jnp.einsum("y,yk->k", pi, per_y)

    forward = jax.grad(lambda th: jnp.sum(jnp.exp(log_ref) * (log_ref - jax.nn.log_softmax(th))))(theta)
    reverse = jax.grad(lambda th: jnp.sum(jax.nn.softmax(th) * (jax.nn.log_softmax(th) - log_ref)))(theta)
    np.testing.assert_allclose(expected_grad("k3"), forward, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(expected_grad("k2"), reverse, rtol=1e-5, atol=1e-6)
    assert not np.allclose(forward, reverse, atol=1e-3)  # the distinction is real here
    np.testing.assert_allclose(expected_grad("k1"), 0.0, atol=1e-6)


@pytest.mark.parametrize("granularity,wrong", [("token", "sequence"), ("sequence", "token"), ("token", "subsentence")])
def test_token_and_sequence_granularities_derive_their_ids_from_the_mask(granularity, wrong):
    batch = random_batch(4)
    cfg = presets.get("grpo", kl_beta=0.0, segmentation={"granularity": granularity})
    other = cfg.replace(segmentation={"granularity": wrong}).segmentation
    bad_ids = segment_ids(jnp.asarray(batch.tokens), jnp.asarray(batch.mask), toy_table(), other)
    args = (jnp.asarray(batch.logp), jnp.asarray(batch.old_logp), jnp.asarray(batch.adv), jnp.asarray(batch.mask))
    derived = policy_loss(cfg, *args)
    given = policy_loss(cfg, *args, segment_ids=bad_ids)
    for k in ("clip_frac_low", "clip_frac_high", "segments_per_response"):
        np.testing.assert_allclose(given.metrics[k], derived.metrics[k], rtol=1e-6)
    np.testing.assert_allclose(given.loss, derived.loss, rtol=1e-6)
    np.testing.assert_allclose(_grad(cfg, args[0], *args[1:], seg=bad_ids), _grad(cfg, *args), rtol=1e-6)
