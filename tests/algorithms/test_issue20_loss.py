"""Issue 20 loss knobs: dual-level clipping (token guard), entropy_scale_low, quantile entropy
normalisation; against the NumPy reference in numpy_reference_sspo.py and as properties."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sspo_jax.algorithms import policy_loss, presets, segment_entropy_stats, segment_ids
from sspo_jax.algorithms.clipping import bound_scales, entropy_scale
from sspo_jax.algorithms.config import AlgorithmConfig, ConfigError

from . import numpy_reference_sspo as ref
from .batches import random_batch, toy_table

GUARD = dict(entropy_alpha=0.0, token_guard=True)


def _seg(cfg, batch):
    return segment_ids(jnp.asarray(batch.tokens), jnp.asarray(batch.mask), toy_table(), cfg.segmentation)


def _loss_and_grad(cfg, batch, logp=None, adv=None, seg=None, stats=None):
    seg = _seg(cfg, batch) if seg is None else seg
    adv = jnp.asarray(batch.adv if adv is None else adv)

    def f(lp):
        out = policy_loss(cfg, lp, jnp.asarray(batch.old_logp), adv, jnp.asarray(batch.mask), segment_ids=seg,
                          entropy=jnp.asarray(batch.entropy), entropy_stats=stats)
        return out.loss, out

    (_, out), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(batch.logp if logp is None else logp))
    return out, np.asarray(grad)


def _ref_cfg(cfg):
    keys = ("eps_low", "eps_high", "dual_clip", "entropy_alpha", "entropy_g_min", "entropy_g_max", "entropy_norm",
            "entropy_scale_low", "token_guard", "token_guard_eps_low", "token_guard_eps_high", "log_ratio_clamp",
            "loss_agg_mode")
    return {k: getattr(cfg, k) for k in keys}


@pytest.mark.parametrize("over", [
    dict(),  # the preset as shipped: guard on, quantile normalisation, entropy widens the upper bound only
    dict(entropy_norm="ratio", entropy_scale_low=True),  # the guard with the earlier entropy bounds
    dict(loss_agg_mode="seq-mean-token-mean"),
    dict(token_guard_eps_low=0.1, token_guard_eps_high=0.15, dual_clip=3.0),
    dict(token_guard=False),
])
@pytest.mark.parametrize("seed", range(3))
def test_matches_numpy_reference(over, seed):
    cfg = presets.get("sspo", **over)
    batch = random_batch(seed, b=6, t=14, scale=0.4)
    seg = _seg(cfg, batch)
    out, grad = _loss_and_grad(cfg, batch, seg=seg)
    loss, g_ref, guard = ref.np_guarded_loss(_ref_cfg(cfg), batch.logp, batch.old_logp, batch.adv, batch.mask,
                                             np.asarray(seg), batch.entropy)
    np.testing.assert_allclose(float(out.loss), loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad, g_ref, rtol=1e-4, atol=1e-6)
    n = batch.mask.sum()
    np.testing.assert_allclose(float(out.metrics["guard_frac"]), guard.sum() / n, atol=1e-6)
    if cfg.token_guard and seed == 0:
        assert guard.any(), "the case must exercise the guard"


def test_guard_stops_a_token_past_its_own_bound_inside_an_unclipped_segment():
    cfg = presets.get("sspo", **GUARD)
    batch = random_batch(0, b=1, t=8, empty_rows=False)
    batch.tokens[:] = 13  # no delimiters: one segment
    batch.mask[:] = True
    old = batch.old_logp
    logp = old.copy()
    logp[0, 3] += 0.5  # w = 1.65 > 1.28, the segment ratio exp(0.5/8) = 1.06 is inside
    for sign in (1.0, -1.0):
        adv = np.array([sign], np.float32)
        out, grad = _loss_and_grad(cfg, batch, logp=logp, adv=adv)
        off, grad_off = _loss_and_grad(cfg.replace(token_guard=False), batch, logp=logp, adv=adv)
        assert float(out.metrics["clip_frac_high"]) == 0.0
        np.testing.assert_allclose(float(out.loss), float(off.loss), rtol=1e-6)  # value unchanged
        if sign > 0:  # past the bound in the direction the clip guards: stopped
            assert grad[0, 3] == 0.0 and grad_off[0, 3] != 0.0
            assert float(out.metrics["guard_frac_high"]) == pytest.approx(1 / 8)
            assert float(out.metrics["escape_frac"]) == 0.0 and float(off.metrics["escape_frac"]) == pytest.approx(1 / 8)
        else:  # A < 0 and w > 1: the gradient pushes it back, no guard
            assert grad[0, 3] != 0.0 and float(out.metrics["guard_frac"]) == 0.0
        np.testing.assert_array_equal(np.delete(grad[0], 3), np.delete(grad_off[0], 3))


@pytest.mark.parametrize("name", ["sspo", "gspo_token", "dapo"])
def test_on_policy_no_guard_and_reinforce(name):
    cfg = presets.get(name, token_guard=True)
    batch = random_batch(3)
    out, grad = _loss_and_grad(cfg, batch, logp=batch.old_logp)
    off, grad_off = _loss_and_grad(cfg.replace(token_guard=False), batch, logp=batch.old_logp)
    assert float(out.metrics["guard_frac"]) == 0.0
    np.testing.assert_array_equal(grad, grad_off)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_token_granularity_with_guard_is_grpo(mode):
    batch = random_batch(5, scale=0.5)
    sspo = presets.get("sspo", entropy_alpha=0.0, token_guard=True, eps_high=0.2, loss_agg_mode=mode,
                       segmentation={"granularity": "token"})
    grpo = presets.get("grpo", kl_beta=0.0, loss_agg_mode=mode)
    a, ga = _loss_and_grad(sspo, batch)
    b, gb = _loss_and_grad(grpo, batch)
    np.testing.assert_allclose(float(a.loss), float(b.loss), rtol=1e-6)
    np.testing.assert_allclose(ga, gb, rtol=1e-6, atol=1e-9)
    assert float(a.metrics["guard_frac"]) == 0.0


def test_guard_fraction_is_monotone_in_its_bound():
    batch = random_batch(7, b=8, t=16, scale=0.5)
    fracs = [float(_loss_and_grad(presets.get("sspo", token_guard=True, token_guard_eps_low=e,
                                              token_guard_eps_high=e), batch)[0].metrics["guard_frac"])
             for e in (0.05, 0.1, 0.2, 0.4, 0.99)]
    assert all(x >= y for x, y in zip(fracs, fracs[1:])) and fracs[0] > fracs[-1], fracs


def test_guard_metrics_merge_over_micro_batches():
    cfg = presets.get("sspo", token_guard=True)
    batch = random_batch(8, b=6, t=12, scale=0.5)
    seg = _seg(cfg, batch)
    stats = segment_entropy_stats(jnp.asarray(batch.entropy), jnp.asarray(batch.mask), seg)
    whole, _ = _loss_and_grad(cfg, batch, seg=seg, stats=stats)
    parts = []
    for sl in (slice(0, 2), slice(2, 6)):
        part = random_batch(8, b=6, t=12, scale=0.5)
        for f in ("tokens", "mask", "logp", "old_logp", "entropy", "adv"):
            setattr(part, f, getattr(batch, f)[sl])
        parts.append(_loss_and_grad(cfg, part, seg=seg[sl], stats=stats)[0])
    for key in ("guard_frac", "guard_frac_low", "guard_frac_high", "escape_frac"):
        merged = sum(float(p.metrics[key]) * float(p.num_tokens) for p in parts) / sum(float(p.num_tokens) for p in parts)
        np.testing.assert_allclose(merged, float(whole.metrics[key]), atol=1e-6, err_msg=key)


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_no_nan_for_empty_rows_and_extreme_log_ratios(scale):
    cfg = presets.get("sspo", token_guard=True, entropy_norm="quantile", entropy_scale_low=False)
    batch = random_batch(9)
    batch.mask[0] = False  # an all-padding row (random_batch also empties the last one)
    logp = batch.old_logp + scale * (np.arange(batch.logp.size).reshape(batch.logp.shape) % 2)
    out, grad = _loss_and_grad(cfg, batch, logp=logp.astype(np.float32))
    assert np.isfinite(float(out.loss)) and np.all(np.isfinite(grad))
    assert all(np.isfinite(float(v)) for v in out.metrics.values())
    empty = random_batch(9)
    empty.mask[:] = False
    out, grad = _loss_and_grad(cfg, empty)
    assert float(out.loss) == 0.0 and np.all(grad == 0.0) and float(out.metrics["guard_frac"]) == 0.0


# --- entropy scaling -----------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["ratio", "quantile"])
@pytest.mark.parametrize("scale_low", [True, False])
def test_entropy_bounds_monotone_bounded_and_without_gradient(norm, scale_low):
    cfg = presets.get("sspo", entropy_norm=norm, entropy_scale_low=scale_low)
    rng = np.random.default_rng(0)
    b, t = 40, 4
    mask = jnp.ones((b, t), bool)
    seg = jnp.zeros((b, t), jnp.int32)  # one segment per row: Hbar = the row's mean entropy
    ent = jnp.asarray(np.repeat(np.sort(rng.gamma(0.7, 1.0, b))[:, None], t, axis=1), jnp.float32)
    g = entropy_scale(cfg, ent, mask, seg)
    g_lo, g_hi = bound_scales(cfg, g)
    e_lo, e_hi = np.asarray(cfg.eps_low * g_lo)[:, 0], np.asarray(cfg.eps_high * g_hi)[:, 0]
    assert np.all(np.diff(e_hi) >= 0) and np.all(np.diff(e_lo) >= 0)  # monotone in segment entropy
    assert np.all(e_hi >= cfg.eps_high * cfg.entropy_g_min - 1e-7) and np.all(e_hi <= cfg.eps_high * cfg.entropy_g_max + 1e-7)
    hi_lo = cfg.entropy_g_max if scale_low else 1.0
    assert np.all(e_lo >= cfg.eps_low * cfg.entropy_g_min - 1e-7) and np.all(e_lo <= cfg.eps_low * hi_lo + 1e-7)
    assert e_hi[-1] > e_hi[0]
    if not scale_low:
        assert e_lo.max() == pytest.approx(cfg.eps_low) and e_hi.max() > cfg.eps_high
    grad = jax.grad(lambda e: jnp.sum(bound_scales(cfg, entropy_scale(cfg, e, mask, seg))[0]))(ent)
    assert np.all(np.asarray(grad) == 0.0)


def test_quantile_is_close_to_the_rank_and_exact_under_micro_batching():
    rng = np.random.default_rng(1)
    b, t = 64, 6
    mask = jnp.asarray(rng.random((b, t)) > 0.2)
    seg = jnp.where(mask, jnp.asarray(np.repeat(np.arange(3), 2)[None].repeat(b, 0)), -1).astype(jnp.int32)
    ent = jnp.asarray(rng.gamma(0.6, 1.2, (b, t)), jnp.float32)
    stats = segment_entropy_stats(ent, mask, seg)
    parts = segment_entropy_stats(ent[:20], mask[:20], seg[:20]) + segment_entropy_stats(ent[20:], mask[20:], seg[20:])
    np.testing.assert_allclose(np.asarray(parts.hist), np.asarray(stats.hist))
    # every segment's mean entropy and its quantile, against the reference and the empirical rank
    h = np.asarray(ent, np.float64)
    m = np.asarray(mask)
    hbar = np.array([h[i, 2 * k:2 * k + 2][m[i, 2 * k:2 * k + 2]].mean()
                     for i in range(b) for k in range(3) if m[i, 2 * k:2 * k + 2].any()])
    q = np.asarray(stats.quantile(jnp.asarray(hbar, jnp.float32)))
    q_ref = np.array([ref.np_hist_quantile(hbar, x) for x in hbar])
    np.testing.assert_allclose(q, q_ref, atol=2e-3)
    rank = (np.argsort(np.argsort(hbar)) + 0.5) / len(hbar)
    assert np.max(np.abs(q - rank)) < 0.03
    # the scale of a micro-batch with the global stats equals that of the whole batch
    cfg = presets.get("sspo", entropy_norm="quantile")
    whole = np.asarray(entropy_scale(cfg, ent, mask, seg, stats))
    micro = np.asarray(entropy_scale(cfg, ent[20:], mask[20:], seg[20:], stats))
    np.testing.assert_array_equal(micro, whole[20:])


def test_config_validation():
    with pytest.raises(ConfigError, match="ratio_form"):
        presets.get("gspo", token_guard=True)
    with pytest.raises(ConfigError, match="token_guard=False"):
        presets.get("sspo", token_guard=False, token_guard_eps_high=0.3)
    with pytest.raises(ConfigError, match="token_guard_eps_low"):
        presets.get("sspo", token_guard=True, token_guard_eps_low=1.0)
    with pytest.raises(ConfigError, match="entropy_norm"):
        presets.get("sspo", entropy_norm="rank")
    # the preset's defaults, as configs/compare/sspo_defaults.yaml's decision rule chose them
    sspo = presets.get("sspo")
    assert sspo.token_guard is True and sspo.entropy_scale_low is False and sspo.entropy_norm == "quantile"
    assert sspo.token_guard_eps_low is None and sspo.token_guard_eps_high is None
    assert AlgorithmConfig().token_guard is False and AlgorithmConfig().entropy_norm == "ratio"
