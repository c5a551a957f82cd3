"""SSPO's neighbours (GMPO, CISPO, Clip-Cov, KL-Cov, the 80/20 mask) against independent NumPy
references and verl's definitions, plus their properties (on policy, robustness, micro-batching)."""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sspo_jax.algorithms import ConfigError, aggregate, policy_loss, presets
from sspo_jax.algorithms import covariance, entropy_mask
from sspo_jax.algorithms.config import LOSS_AGG_MODES

from . import numpy_reference_neighbours as ref
from .batches import random_batch

NEW = ("gmpo", "cispo", "clip_cov", "kl_cov", "top_entropy")


def _run(cfg, batch, *, logp=None, adv=None, rng=None, threshold=None):
    lp0 = jnp.asarray(batch.logp if logp is None else logp)
    a = jnp.asarray(batch.adv if adv is None else adv)

    def f(lp):
        out = policy_loss(cfg, lp, jnp.asarray(batch.old_logp), a, jnp.asarray(batch.mask),
                          entropy=jnp.asarray(batch.entropy), rng=rng, entropy_threshold=threshold)
        return out.loss, out

    (loss, out), grad = jax.value_and_grad(f, has_aux=True)(lp0)
    return float(loss), np.asarray(grad), out


def _away_from_kinks(batch, bounds, margin=2e-3):
    """Moves token log-ratios off the clip kinks (|D - kink| < margin) so gradients are defined."""
    d = batch.logp.astype(np.float64) - batch.old_logp
    for k in bounds:
        near = np.abs(d - k) < margin
        d = np.where(near, k + np.sign(d - k + 1e-12) * 2 * margin, d)
    return dataclasses.replace(batch, logp=(batch.old_logp + d).astype(np.float32))


# ------------------------------------------------------------------ references, value and gradient

@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("seed", [0, 1])
def test_gmpo_matches_reference(mode, seed):
    cfg = presets.get("gmpo", loss_agg_mode=mode)
    batch = _away_from_kinks(random_batch(seed, scale=0.5), (0.4, -0.4))
    per_token = np.random.default_rng(seed).normal(size=batch.mask.shape).astype(np.float32)
    for adv in (batch.adv, per_token):
        loss, grad, out = _run(cfg, batch, adv=adv)
        exp_l, exp_g = ref.np_gmpo(batch.logp, batch.old_logp, adv, batch.mask, 0.4, 0.4, mode)
        np.testing.assert_allclose(loss, exp_l, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(grad, exp_g, rtol=1e-4, atol=1e-7)
    assert float(out.metrics["clip_frac_low"] + out.metrics["clip_frac_high"]) > 0  # the clip is exercised


def test_gmpo_matches_verl_geo_mean():
    """verl's ``geo_mean`` on rows without empty ones (verl averages over all B rows including empty
    ones, and adds 1e-8 to the length; sspo_jax counts only rows with a valid token and clamps the
    mean log-ratio at +-20). Gradient: finite differences of verl's definition."""
    batch = _away_from_kinks(random_batch(3, scale=0.5, empty_rows=False), (0.4, -0.4))
    cfg = presets.get("gmpo")
    loss, grad, _ = _run(cfg, batch)
    lp = batch.logp.astype(np.float64)
    verl = lambda x: ref.verl_geo_mean(x, batch.old_logp, batch.adv, batch.mask, 0.4, 0.4)  # noqa: E731
    np.testing.assert_allclose(loss, verl(lp), rtol=1e-5)
    np.testing.assert_allclose(grad, ref.fd_grad(verl, lp), rtol=1e-3, atol=1e-6)


def test_gmpo_at_token_granularity_is_the_ppo_clip_with_the_same_bounds_in_ratio_space():
    batch = _away_from_kinks(random_batch(4, scale=0.5), (0.3, -0.3))
    gm = presets.get("gmpo", eps_low=0.3, eps_high=0.3, segmentation={"granularity": "token"})
    grpo = presets.get("grpo", kl_beta=0.0, eps_low=1 - math.exp(-0.3), eps_high=math.exp(0.3) - 1)
    l1, g1, _ = _run(gm, batch)
    l2, g2, _ = _run(grpo, batch)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_cispo_matches_reference_and_keeps_every_token(mode):
    batch = random_batch(5, scale=0.8)
    cfg = presets.get("cispo", loss_agg_mode=mode, eps_low=0.2, eps_high=0.28)
    loss, grad, out = _run(cfg, batch)
    exp_l, exp_g = ref.np_cispo(batch.logp, batch.old_logp, batch.adv, batch.mask, 0.2, 0.28, mode)
    np.testing.assert_allclose(loss, exp_l, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, exp_g, rtol=1e-5, atol=1e-7)
    assert float(out.metrics["clip_frac_high"]) > 0  # some weights are truncated ...
    valid_nonzero_adv = batch.mask & (batch.adv[:, None] != 0)
    assert np.all(grad[valid_nonzero_adv] != 0)  # ... and still every token trains


def test_clip_cov_matches_reference_and_verl_given_the_chosen_tokens():
    """The random subset differs in how it is drawn (verl: torch.randperm; here: the smallest uniform
    keys), so both are given the tokens this implementation chose; verl's ratio is not clamped."""
    batch = _away_from_kinks(random_batch(6, b=8, t=16, scale=0.4), (math.log(0.8), math.log(1.2)))
    adv = (3.0 * batch.adv).astype(np.float32)  # covariances in (1, 5) exist
    cfg = presets.get("clip_cov", cov_clip_frac=0.02)
    loss, grad, out = _run(cfg, batch, adv=adv, rng=jax.random.key(1))
    lp, old, m = jnp.asarray(batch.logp), jnp.asarray(batch.old_logp), jnp.asarray(batch.mask)
    a2 = jnp.broadcast_to(jnp.asarray(adv)[:, None], m.shape)
    cov = covariance.token_covariance(a2, lp, m)
    np.testing.assert_allclose(cov, ref.np_covariance(adv, batch.logp, batch.mask), rtol=1e-4, atol=1e-5)
    cand = ref.np_clip_cov_candidates(batch.logp, old, adv, batch.mask, 0.2, 0.2, 1.0, 5.0)
    budget = ref.np_clip_cov_budget(batch.mask, 0.02)
    ratio = np.exp(batch.logp - batch.old_logp)
    clipped = ((adv[:, None] > 0) & (ratio > 1.2)) | ((adv[:, None] < 0) & (ratio < 0.8))
    eligible = jnp.asarray(~clipped)
    chosen = np.asarray(covariance.clip_cov_mask(cov, m, eligible, 0.02, 1.0, 5.0, jax.random.key(1)))
    assert cand.sum() > budget >= 1 and chosen.sum() == budget and np.all(chosen <= cand)
    np.testing.assert_allclose(float(out.metrics["cov_selected_frac"]), budget / batch.mask.sum(), rtol=1e-6)
    exp_l, exp_g = ref.np_clip_cov(batch.logp, old, adv, batch.mask, 0.2, 0.2, chosen)
    np.testing.assert_allclose(loss, exp_l, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, exp_g, rtol=1e-5, atol=1e-7)
    assert np.all(grad[chosen] == 0)
    verl = lambda x: ref.verl_clip_cov(x, old, adv, batch.mask, 0.2, 0.2, chosen)  # noqa: E731
    np.testing.assert_allclose(loss, verl(batch.logp.astype(np.float64)), rtol=1e-5)
    np.testing.assert_allclose(grad, ref.fd_grad(verl, batch.logp), rtol=1e-3, atol=1e-6)


def test_clip_cov_draws_through_the_key_only():
    batch = random_batch(6, b=8, t=16, scale=0.4)
    m = jnp.asarray(batch.mask)
    cov = covariance.token_covariance(jnp.broadcast_to(3.0 * jnp.asarray(batch.adv)[:, None], m.shape),
                                      jnp.asarray(batch.logp), m)
    pick = jax.jit(lambda k: covariance.clip_cov_mask(cov, m, m, 0.05, 1.0, 5.0, k))
    draws = [np.asarray(pick(jax.random.key(s))) for s in range(6)]
    np.testing.assert_array_equal(draws[0], np.asarray(pick(jax.random.key(0))))  # same key, same pick
    assert len({d.tobytes() for d in draws}) > 1  # other keys, other picks
    assert len({int(d.sum()) for d in draws}) == 1
    all_of_them = np.asarray(covariance.clip_cov_mask(cov, m, m, 1.0, 1.0, 5.0, jax.random.key(0)))
    np.testing.assert_array_equal(all_of_them, batch.mask & (np.asarray(cov) > 1) & (np.asarray(cov) < 5))
    with pytest.raises(ValueError, match="rng=jax.random.key"):
        _run(presets.get("clip_cov"), batch)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_kl_cov_matches_reference_and_verl(mode):
    """verl selects with torch.topk (ties arbitrary; here by position: no ties in these inputs)."""
    batch = random_batch(7, b=8, t=16, scale=0.4)
    cfg = presets.get("kl_cov", kl_cov_frac=0.05, loss_agg_mode=mode)
    loss, grad, out = _run(cfg, batch)
    exp_l, exp_g = ref.np_kl_cov(batch.logp, batch.old_logp, batch.adv, batch.mask, 0.05, 1.0, mode)
    np.testing.assert_allclose(loss, exp_l, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, exp_g, rtol=1e-4, atol=1e-7)
    k = ref.np_clip_cov_budget(batch.mask, 0.05)
    np.testing.assert_allclose(float(out.metrics["cov_selected_frac"]), k / batch.mask.sum(), rtol=1e-6)
    if mode == "token-mean":
        verl = lambda x: ref.verl_kl_cov(x, batch.old_logp, batch.adv, batch.mask, 0.05, 1.0)  # noqa: E731
        np.testing.assert_allclose(loss, verl(batch.logp.astype(np.float64)), rtol=1e-5)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_top_entropy_matches_reference(mode):
    batch = _away_from_kinks(random_batch(8, b=8, t=16, scale=0.4), (math.log(0.8), math.log(1.28)))
    cfg = presets.get("top_entropy", loss_agg_mode=mode)
    loss, grad, out = _run(cfg, batch)
    exp_l, exp_g = ref.np_top_entropy(batch.logp, batch.old_logp, batch.adv, batch.mask, batch.entropy,
                                      0.2, 0.28, 80.0, mode)
    np.testing.assert_allclose(loss, exp_l, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, exp_g, rtol=1e-5, atol=1e-7)
    tau = ref.np_entropy_threshold(batch.entropy, batch.mask, 80.0)
    keep = batch.mask & (batch.entropy >= tau)
    np.testing.assert_allclose(float(out.metrics["entropy_mask_frac"]), keep.sum() / batch.mask.sum(), rtol=1e-6)
    assert np.all(grad[batch.mask & ~keep] == 0)


def test_entropy_threshold_percentiles_and_trl_hand_case():
    # TRL's test of top_entropy_quantile = 0.2: of 10 valid tokens only 0.9 and 1.0 are kept.
    ent = jnp.asarray([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.7, 0.8, 0.9, 1.0, 1.1, 1.2]])
    mask = jnp.asarray([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], bool)
    tau = entropy_mask.entropy_threshold(ent, mask, 80.0)
    np.testing.assert_array_equal(entropy_mask.high_entropy_mask(ent, mask, tau),
                                  [[0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0]])
    rng = np.random.default_rng(0)
    e, m = rng.uniform(0, 3, (5, 9)).astype(np.float32), rng.random((5, 9)) < 0.6
    for p in (0.0, 37.5, 80.0, 99.0):
        np.testing.assert_allclose(entropy_mask.entropy_threshold(jnp.asarray(e), jnp.asarray(m), p),
                                   ref.np_entropy_threshold(e, m, p), rtol=1e-5)
    assert float(entropy_mask.entropy_threshold(jnp.asarray(e), jnp.zeros((5, 9), bool), 80.0)) == math.inf


# ------------------------------------------------------------------ properties

@pytest.mark.parametrize("name", ["clip_cov", "top_entropy"])
def test_on_policy_token_dropping_presets_are_reinforce_on_the_kept_tokens(name):
    batch = random_batch(9, b=8, t=16)
    batch = dataclasses.replace(batch, logp=batch.old_logp.copy(), adv=(3 * batch.adv).astype(np.float32))
    cfg = presets.get(name, cov_clip_frac=0.05)
    loss, grad, out = _run(cfg, batch, rng=jax.random.key(2))
    mask = jnp.asarray(batch.mask)
    if name == "top_entropy":
        kept = np.asarray(entropy_mask.high_entropy_mask(jnp.asarray(batch.entropy), mask,
                                                         entropy_mask.entropy_threshold(jnp.asarray(batch.entropy), mask, 80.0)))
    else:
        kept = batch.mask & (grad != 0)
        assert float(out.metrics["cov_selected_frac"]) > 0 and (batch.mask & ~kept).sum() >= 1

    def reinforce(lp):
        s, d = aggregate(jnp.where(jnp.asarray(kept), -jnp.asarray(batch.adv)[:, None] * lp, 0.0), mask,
                         cfg.loss_agg_mode)
        return s / jnp.maximum(d, 1)

    np.testing.assert_allclose(grad, jax.grad(reinforce)(jnp.asarray(batch.logp)), rtol=1e-5, atol=1e-8)
    assert float(out.metrics["clip_frac_low"]) == 0 == float(out.metrics["clip_frac_high"])


@pytest.mark.parametrize("name", NEW)
def test_no_nan_for_empty_rows_all_padding_and_extreme_log_ratios(name):
    cfg = presets.get(name)
    rng = np.random.default_rng(1)
    b, t = 4, 8
    mask = np.zeros((b, t), bool)
    mask[0, :5] = mask[1, 2:] = True  # rows 2, 3 are all padding
    old = np.full((b, t), -2.0, np.float32)
    delta = rng.choice([-1e4, 1e4, 0.3, -0.3], size=(b, t)).astype(np.float32)
    batch = random_batch(0, b=b, t=t)
    batch = dataclasses.replace(batch, mask=mask, old_logp=old, logp=old + delta,
                                adv=np.asarray([1.5, -2.0, 0.0, 1.0], np.float32))
    for m in (mask, np.zeros_like(mask)):
        bt = dataclasses.replace(batch, mask=m)
        loss, grad, out = _run(cfg, bt, rng=jax.random.key(0))
        assert np.isfinite(loss) and np.all(np.isfinite(grad)) and np.all(grad[~m] == 0), name
        assert all(np.isfinite(float(v)) for v in out.metrics.values()), name


def _micro(cfg, batch, n_micro, threshold=None):
    b = batch.mask.shape[0]
    size = b // n_micro
    s_tot, d_tot, g_tot = 0.0, 0.0, 0.0
    for i in range(n_micro):
        sl = slice(i * size, (i + 1) * size)

        def f(lp):
            out = policy_loss(cfg, lp, jnp.asarray(batch.old_logp[sl]), jnp.asarray(batch.adv[sl]),
                              jnp.asarray(batch.mask[sl]), entropy=jnp.asarray(batch.entropy[sl]),
                              entropy_threshold=threshold)
            return out.loss_sum, out.denominator

        (s, d), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(batch.logp[sl]))
        s_tot, d_tot = s_tot + s, d_tot + d
        g_tot = g if i == 0 else jnp.concatenate([g_tot, g])
    return float(s_tot / d_tot), np.asarray(g_tot) / float(d_tot)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("name", ["gmpo", "cispo", "top_entropy"])
def test_micro_batches_match_one_batch(name, mode):
    """Exact with the global entropy threshold; Clip-Cov and KL-Cov select per batch (as verl)."""
    batch = random_batch(10, b=8, t=12, scale=0.4)
    cfg = presets.get(name, loss_agg_mode=mode)
    tau = entropy_mask.entropy_threshold(jnp.asarray(batch.entropy), jnp.asarray(batch.mask), 80.0)
    loss, _, _ = _run(cfg, batch, threshold=tau)
    full_s, full_g = _micro(cfg, batch, 1, tau)
    for n in (2, 4):
        l_m, g_m = _micro(cfg, batch, n, tau)
        np.testing.assert_allclose(l_m, loss, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g_m, full_g, rtol=1e-5, atol=1e-8)


class TestJit(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_every_new_preset_same_with_and_without_jit(self):
        batch = random_batch(11)
        for name in NEW:
            cfg = presets.get(name)
            fn = self.variant(lambda lp, key, cfg=cfg: policy_loss(
                cfg, lp, jnp.asarray(batch.old_logp), jnp.asarray(batch.adv), jnp.asarray(batch.mask),
                entropy=jnp.asarray(batch.entropy), rng=key).loss)
            eager = _run(cfg, batch, rng=jax.random.key(3))[0]
            np.testing.assert_allclose(fn(jnp.asarray(batch.logp), jax.random.key(3)), eager, rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    ({"policy_loss_kind": "ppo2"}, "policy_loss_kind"),
    ({"cov_clip_frac": 0.0}, "cov_clip_frac"),
    ({"cov_clip_low": 5.0}, "cov_clip_low"),
    ({"kl_cov_frac": 1.5}, "kl_cov_frac"),
    ({"kl_cov_coef": -1.0}, "kl_cov_coef"),
    ({"entropy_mask_percentile": 100.0}, "entropy_mask_percentile"),
    ({"policy_loss_kind": "kl_cov", "segmentation": {"granularity": "sequence"}}, "granularity='token'"),
    ({"policy_loss_kind": "gmpo", "dual_clip": 3.0}, "dual_clip"),
])
def test_new_fields_are_validated(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        presets.get("grpo", **kwargs)


def test_preset_settings_follow_their_papers():
    g, c, cc, kc, te = (presets.get(n) for n in NEW)
    assert (g.policy_loss_kind, g.eps_low, g.eps_high, g.segmentation.granularity) == ("gmpo", 0.4, 0.4, "sequence")
    assert (c.policy_loss_kind, c.eps_low, c.loss_agg_mode, c.kl_beta) == ("cispo", 1.0, "token-mean", 0.0)
    assert (cc.cov_clip_frac, cc.cov_clip_low, cc.cov_clip_high, cc.uses_rng) == (2e-4, 1.0, 5.0, True)
    assert (kc.kl_cov_frac, kc.kl_cov_coef, kc.uses_rng) == (2e-3, 1.0, False)
    assert te.entropy_mask_percentile == 80.0 and te.uses_entropy and te.dynamic_sampling
    with pytest.raises(ConfigError, match="eps_low"):
        presets.get("grpo", eps_low=1.0)  # only CISPO may drop the lower bound
