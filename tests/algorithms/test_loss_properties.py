"""The properties of ALGORITHMS.md section 10 for ratios, clipping and the policy loss."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sspo_jax.algorithms import (SegmentationConfig, clipped_surrogate, entropy_scale, policy_loss, presets,
                                 segment_entropy_stats, segment_ids)
from sspo_jax.algorithms import ratios
from sspo_jax.algorithms.config import LOSS_AGG_MODES

from .batches import classic_preset as _classic, random_batch, toy_table


def _seg(cfg, batch):
    return segment_ids(jnp.asarray(batch.tokens), jnp.asarray(batch.mask), toy_table(), cfg.segmentation)


def _loss_and_grad(cfg, batch, *, adv=None, seg=None, logp=None, use_ref=True):
    adv = jnp.asarray(batch.adv if adv is None else adv)
    seg = _seg(cfg, batch) if seg is None else seg
    lp0 = jnp.asarray(batch.logp if logp is None else logp)

    def f(lp):
        out = policy_loss(cfg, lp, jnp.asarray(batch.old_logp), adv, jnp.asarray(batch.mask), segment_ids=seg,
                          entropy=jnp.asarray(batch.entropy), ref_logp=jnp.asarray(batch.ref_logp) if use_ref else None)
        return out.loss, out

    (loss, out), grad = jax.value_and_grad(f, has_aux=True)(lp0)
    return loss, grad, out


def _with_seg(cfg, **seg_fields):
    return dataclasses.replace(cfg, segmentation=dataclasses.replace(cfg.segmentation, **seg_fields))


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("seed", [0, 1])
def test_sspo_token_granularity_alpha0_equals_grpo(mode, seed):
    batch = random_batch(seed)
    grpo = _classic("grpo", loss_agg_mode=mode, eps_high=0.28, kl_beta=0.0)
    sspo = _with_seg(_classic("sspo", loss_agg_mode=mode, entropy_alpha=0.0), granularity="token")
    l1, g1, o1 = _loss_and_grad(grpo, batch)
    l2, g2, o2 = _loss_and_grad(sspo, batch)
    np.testing.assert_allclose(l1, l2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-7)
    assert float(o1.metrics["clip_frac_low"] + o1.metrics["clip_frac_high"]) > 0  # the bounds are exercised


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("form", ["sg", "broadcast"])
def test_sspo_sequence_granularity_alpha0_equals_gspo(mode, form):
    batch = random_batch(4, scale=0.3)
    gspo = _classic("gspo", loss_agg_mode=mode, eps_low=0.01, eps_high=0.02, ratio_form=form)
    sspo = _with_seg(_classic("sspo", loss_agg_mode=mode, entropy_alpha=0.0, eps_low=0.01, eps_high=0.02,
                                 ratio_form=form), granularity="sequence")
    l1, g1, o1 = _loss_and_grad(gspo, batch)
    l2, g2, _ = _loss_and_grad(sspo, batch)
    np.testing.assert_allclose(l1, l2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-7)
    assert float(o1.metrics["clip_frac_low"] + o1.metrics["clip_frac_high"]) > 0


def test_gspo_objective_is_mean_over_responses_of_sequence_surrogate():
    batch = random_batch(4, scale=0.05)
    cfg = _classic("gspo", eps_low=0.01, eps_high=0.02)
    loss, _, _ = _loss_and_grad(cfg, batch)
    s = np.exp(np.asarray(ratios.sequence_log_ratio(jnp.asarray(batch.logp), jnp.asarray(batch.old_logp),
                                                     jnp.asarray(batch.mask))))
    a = batch.adv
    f = np.minimum(s * a, np.clip(s, 1 - 0.01, 1 + 0.02) * a)
    rows = batch.mask.any(axis=1)
    np.testing.assert_allclose(float(loss), -f[rows].mean(), rtol=1e-5)


@pytest.mark.parametrize("granularity", ["subsentence", "sequence"])
def test_sg_form_equals_broadcast_form_in_value_and_gradient(granularity):
    batch = random_batch(5)
    base = _with_seg(_classic("sspo", entropy_alpha=1.0), granularity=granularity)
    l1, g1, _ = _loss_and_grad(dataclasses.replace(base, ratio_form="sg"), batch)
    l2, g2, _ = _loss_and_grad(dataclasses.replace(base, ratio_form="broadcast"), batch)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-7)


def test_sg_form_allows_per_token_advantages():
    batch = random_batch(6)
    cfg = _classic("sspo")
    per_token = np.random.default_rng(0).normal(size=batch.mask.shape).astype(np.float32)
    loss, grad, _ = _loss_and_grad(cfg, batch, adv=per_token)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(grad))
    _, grad_b, _ = _loss_and_grad(dataclasses.replace(cfg, ratio_form="broadcast"), batch, adv=per_token)
    assert not np.allclose(grad, grad_b)  # the two forms differ once A varies inside a segment


def test_segment_log_ratio_is_mean_and_between_token_extremes():
    batch = random_batch(7, t=20, scale=0.5)
    seg = _seg(_classic("sspo"), batch)
    lr = np.asarray(ratios.segment_log_ratio(jnp.asarray(batch.logp), jnp.asarray(batch.old_logp),
                                             jnp.asarray(batch.mask), seg))
    delta = batch.logp - batch.old_logp
    seg = np.asarray(seg)
    for b in range(seg.shape[0]):
        for k in set(seg[b][seg[b] >= 0]):
            idx = seg[b] == k
            np.testing.assert_allclose(lr[b, idx], delta[b, idx].mean(), rtol=1e-5, atol=1e-6)
            r = np.exp(lr[b, idx][0])
            assert np.exp(delta[b, idx]).min() - 1e-6 <= r <= np.exp(delta[b, idx]).max() + 1e-6


def test_permuting_tokens_inside_a_segment_changes_nothing():
    batch = random_batch(8, t=16)
    cfg = _classic("sspo")
    seg = np.asarray(_seg(cfg, batch))
    perm_logp, perm_old, perm_ent = batch.logp.copy(), batch.old_logp.copy(), batch.entropy.copy()
    rng = np.random.default_rng(0)
    for b in range(seg.shape[0]):
        for k in set(seg[b][seg[b] >= 0]):
            idx = np.flatnonzero(seg[b] == k)
            p = rng.permutation(idx)
            perm_logp[b, idx], perm_old[b, idx], perm_ent[b, idx] = batch.logp[b, p], batch.old_logp[b, p], batch.entropy[b, p]
    permuted = dataclasses.replace(batch, logp=perm_logp, old_logp=perm_old, entropy=perm_ent)
    l1, _, o1 = _loss_and_grad(cfg, batch, seg=jnp.asarray(seg))
    l2, _, o2 = _loss_and_grad(cfg, permuted, seg=jnp.asarray(seg))
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for key in ("clip_frac_low", "clip_frac_high", "g_mean"):
        np.testing.assert_allclose(o1.metrics[key], o2.metrics[key], rtol=1e-5)


# Clip-Cov and the 80/20 mask drop tokens by design: on policy they are REINFORCE on the kept tokens
# (tests/algorithms/test_neighbour_presets.py).
@pytest.mark.parametrize("name", [n for n in presets.names() if n not in ("clip_cov", "top_entropy")])
def test_on_policy_every_preset_is_reinforce(name):
    batch = random_batch(9)
    cfg = _classic(name, kl_beta=0.0)
    batch = dataclasses.replace(batch, logp=batch.old_logp.copy())
    loss, grad, out = _loss_and_grad(cfg, batch)
    assert float(out.metrics["clip_frac_low"]) == 0 and float(out.metrics["clip_frac_high"]) == 0
    np.testing.assert_allclose(out.metrics["ratio_mean"], 1.0, rtol=1e-6)
    # REINFORCE: d/dlogp of -aggregate(A * logp) (each token weighted as the mode weights it).
    mask = jnp.asarray(batch.mask)
    from sspo_jax.algorithms import aggregate

    def reinforce(lp):
        s, d = aggregate(-jnp.asarray(batch.adv)[:, None] * lp, mask, cfg.loss_agg_mode, cfg.loss_norm_constant)
        return s / jnp.maximum(d, 1)

    np.testing.assert_allclose(grad, jax.grad(reinforce)(jnp.asarray(batch.logp)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_token_gradient_is_zero_iff_clipped(sign):
    e_lo, e_hi = 0.2, 0.28
    log_ratio = jnp.log(jnp.asarray([[0.5, 0.79, 0.81, 1.0, 1.27, 1.29, 2.0]], jnp.float32))
    adv = jnp.full(log_ratio.shape, sign)
    mask = jnp.ones(log_ratio.shape, bool)
    grad = jax.grad(lambda lr: jnp.sum(clipped_surrogate(lr, adv, mask, e_lo, e_hi).loss))(log_ratio)
    rho = np.exp(np.asarray(log_ratio))
    expect_zero = rho > 1 + e_hi if sign > 0 else rho < 1 - e_lo
    np.testing.assert_array_equal(np.asarray(grad)[0] == 0, expect_zero[0])


def test_dual_clip_caps_negative_advantage_loss():
    c = 3.0
    rho = jnp.asarray([[0.5, 1.0, 2.5, 3.5, 10.0]], jnp.float32)
    adv = jnp.full(rho.shape, -2.0)
    mask = jnp.ones(rho.shape, bool)
    out = clipped_surrogate(jnp.log(rho), adv, mask, 0.2, 0.2, dual_clip=c)
    loss = np.asarray(out.loss)[0]
    assert np.all(loss <= -c * -2.0 + 1e-6)
    np.testing.assert_allclose(loss[3:], c * 2.0)
    np.testing.assert_array_equal(np.asarray(out.dual_clipped)[0], [False, False, False, True, True])
    grad = jax.grad(lambda lr: jnp.sum(clipped_surrogate(lr, adv, mask, 0.2, 0.2, dual_clip=c).loss))(jnp.log(rho))
    assert np.all(np.asarray(grad)[0, 3:] == 0) and np.all(np.asarray(grad)[0, 1:3] != 0)
    # positive advantages are never dual-clipped
    pos = clipped_surrogate(jnp.log(rho), -adv, mask, 0.2, 0.2, dual_clip=c)
    assert not bool(jnp.any(pos.dual_clipped))


# --- entropy-scaled bounds ---------------------------------------------------------------------

def _single_segment_entropies(hbars):
    """One response per entropy value, each one segment of 3 tokens."""
    b = len(hbars)
    ent = jnp.repeat(jnp.asarray(hbars, jnp.float32)[:, None], 3, axis=1)
    mask = jnp.ones((b, 3), bool)
    seg = jnp.zeros((b, 3), jnp.int32)
    return ent, mask, seg


@pytest.mark.parametrize("norm", ["ratio", "zscore", "none"])
def test_entropy_scale_monotone_and_bounded(norm):
    cfg = _classic("sspo", entropy_norm=norm)
    hbars = np.linspace(0.01, 4.0, 25)
    ent, mask, seg = _single_segment_entropies(hbars)
    g = np.asarray(entropy_scale(cfg, ent, mask, seg))[:, 0]
    assert np.all(np.diff(g) >= 0), "wider bounds for higher-entropy segments"
    assert np.all(g >= cfg.entropy_g_min - 1e-7) and np.all(g <= cfg.entropy_g_max + 1e-7)
    assert g[0] < g[-1]


def test_entropy_scale_ratio_formula_and_alpha0():
    cfg = _classic("sspo")
    ent, mask, seg = _single_segment_entropies([0.5, 1.0, 1.5])  # mean 1.0 -> h = Hbar
    np.testing.assert_allclose(np.asarray(entropy_scale(cfg, ent, mask, seg))[:, 0], [0.5, 1.0, 1.5], rtol=1e-6)
    off = np.asarray(entropy_scale(dataclasses.replace(cfg, entropy_alpha=0.0), ent, mask, seg))
    np.testing.assert_array_equal(off, 1.0)


def test_no_gradient_flows_through_entropy():
    batch = random_batch(10)
    cfg = _classic("sspo")
    seg = _seg(cfg, batch)

    def f(ent):
        return policy_loss(cfg, jnp.asarray(batch.logp), jnp.asarray(batch.old_logp), jnp.asarray(batch.adv),
                           jnp.asarray(batch.mask), segment_ids=seg, entropy=ent).loss

    np.testing.assert_array_equal(jax.grad(f)(jnp.asarray(batch.entropy)), 0.0)


def test_entropy_stats_are_additive_over_micro_batches():
    batch = random_batch(11, b=6)
    cfg = _classic("sspo")
    seg = _seg(cfg, batch)
    ent, mask = jnp.asarray(batch.entropy), jnp.asarray(batch.mask)
    whole = segment_entropy_stats(ent, mask, seg)
    parts = segment_entropy_stats(ent[:2], mask[:2], seg[:2]) + segment_entropy_stats(ent[2:], mask[2:], seg[2:])
    for a, b in ((whole.total, parts.total), (whole.total_sq, parts.total_sq), (whole.count, parts.count)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_sspo_needs_entropy_and_grpo_needs_ref():
    batch = random_batch(12)
    args = (jnp.asarray(batch.logp), jnp.asarray(batch.old_logp), jnp.asarray(batch.adv), jnp.asarray(batch.mask))
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(_classic("sspo"), *args, segment_ids=_seg(_classic("sspo"), batch))
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(_classic("grpo"), *args)
    with pytest.raises(ValueError, match="advantages has shape"):
        policy_loss(_classic("dapo"), args[0], args[1], args[2][:2], args[3])


# --- outliers and clip-fraction ordering --------------------------------------------------------

def _outlier_batch():
    """One response of 4 segments (3 tokens each); token 4 (segment 1) has an extreme ratio."""
    t = 12
    tokens = np.full((1, t), 13, np.int32)
    tokens[0, [2, 5, 8, 11]] = 1  # commas close segments of 3
    old = np.full((1, t), -1.0, np.float32)
    logp = old.copy()
    logp[0, 4] += 3.0  # ratio e^3 ~ 20
    return tokens, logp, old


@pytest.mark.parametrize("granularity,clipped_tokens", [("token", [4]), ("subsentence", [3, 4, 5]),
                                                        ("sequence", list(range(12)))])
def test_one_extreme_token_clips_its_unit_only(granularity, clipped_tokens):
    tokens, logp, old = _outlier_batch()
    mask = jnp.ones(tokens.shape, bool)
    cfg = _with_seg(_classic("sspo", entropy_alpha=0.0, eps_low=0.2, eps_high=0.2), granularity=granularity)
    seg = segment_ids(jnp.asarray(tokens), mask, toy_table(), cfg.segmentation)
    adv = jnp.asarray([1.0])
    grad = jax.grad(lambda lp: policy_loss(cfg, lp, jnp.asarray(old), adv, mask, segment_ids=seg).loss_sum)(
        jnp.asarray(logp))
    # sequence: mean log-ratio 3/12 = 0.25 -> ratio 1.28 > 1.2, so the whole response is clipped.
    assert list(np.flatnonzero(np.asarray(grad)[0] == 0)) == clipped_tokens


def _noisy_segmented(seed: int, b: int, t: int):
    """Rows of 6-token segments with i.i.d. noisy token log-ratios and +-1 advantages (host arrays)."""
    rng = np.random.default_rng(seed)
    tokens = np.full((b, t), 13, np.int32)
    tokens[:, 5::6] = 1  # segments of 6 tokens
    old = np.full((b, t), -1.0, np.float32)
    logp = (old + 0.3 * rng.normal(size=(b, t))).astype(np.float32)
    adv = rng.choice([-1.0, 1.0], size=b).astype(np.float32)
    return tokens, jnp.ones((b, t), bool), old, logp, adv


def test_clip_fraction_falls_from_token_to_segment_to_sequence():
    tokens, mask, old, logp, adv = _noisy_segmented(0, 64, 48)
    adv = jnp.asarray(adv)
    fracs = {}
    for gran in ("token", "subsentence", "sequence"):
        cfg = _with_seg(_classic("sspo", entropy_alpha=0.0), granularity=gran)
        seg = segment_ids(jnp.asarray(tokens), mask, toy_table(), cfg.segmentation)
        m = policy_loss(cfg, jnp.asarray(logp), jnp.asarray(old), adv, mask, segment_ids=seg).metrics
        fracs[gran] = float(m["clip_frac_low"] + m["clip_frac_high"])
    assert fracs["token"] > fracs["subsentence"] > fracs["sequence"], fracs


def test_escape_fraction_counts_tokens_a_unit_mean_lets_through():
    b, t = 32, 24
    tokens, mask, old, logp, adv = _noisy_segmented(1, b, t)
    escape = {}
    for gran in ("token", "subsentence", "sequence"):
        cfg = _with_seg(_classic("sspo", entropy_alpha=0.0), granularity=gran)
        seg = segment_ids(jnp.asarray(tokens), mask, toy_table(), cfg.segmentation)
        out = policy_loss(cfg, jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), mask, segment_ids=seg)
        escape[gran] = float(out.metrics["escape_frac"])
        # plain NumPy: a token's own ratio past the bound for its advantage's sign, its unit unclipped
        r_tok = np.exp(logp - old)
        a = adv[:, None]
        past = ((a > 0) & (r_tok > 1 + cfg.eps_high)) | ((a < 0) & (r_tok < 1 - cfg.eps_low))
        if gran == "token":
            unit_clipped = past
        else:
            sid = np.asarray(seg)
            unit = np.zeros((b, t))
            for i in range(b):
                for k in np.unique(sid[i]):
                    unit[i, sid[i] == k] = np.exp(np.mean(logp[i, sid[i] == k] - old[i, sid[i] == k]))
            unit_clipped = ((a > 0) & (unit > 1 + cfg.eps_high)) | ((a < 0) & (unit < 1 - cfg.eps_low))
        np.testing.assert_allclose(escape[gran], np.mean(past & ~unit_clipped), atol=1e-6, err_msg=gran)
    assert escape["token"] == 0.0 and 0 < escape["subsentence"] < escape["sequence"], escape


# --- robustness -------------------------------------------------------------------------------

@st.composite
def loss_inputs(draw):
    b = draw(st.integers(1, 4))
    t = draw(st.integers(1, 10))
    mask = np.zeros((b, t), bool)
    for i in range(b):
        s = draw(st.integers(0, t))
        mask[i, s:s + draw(st.integers(0, t - s))] = True
    extreme = st.floats(-1e4, 1e4, allow_nan=False, width=32)
    delta = np.array(draw(st.lists(st.one_of(extreme, st.floats(-2, 2, width=32)), min_size=b * t, max_size=b * t)),
                     np.float32).reshape(b, t)
    tokens = np.array(draw(st.lists(st.integers(0, 15), min_size=b * t, max_size=b * t)), np.int32).reshape(b, t)
    adv = np.array(draw(st.lists(st.floats(-3, 3, width=32), min_size=b, max_size=b)), np.float32)
    ent = np.array(draw(st.lists(st.floats(0, 5, width=32), min_size=b * t, max_size=b * t)), np.float32).reshape(b, t)
    return tokens, mask, delta, adv, ent


@settings(max_examples=15)
@given(loss_inputs(), st.sampled_from(presets.names()), st.sampled_from(LOSS_AGG_MODES))
def test_finite_for_empty_rows_no_delimiters_and_extreme_log_ratios(inputs, name, mode):
    tokens, mask, delta, adv, ent = inputs
    cfg = _classic(name, loss_agg_mode=mode)
    old = np.full(delta.shape, -2.0, np.float32)
    logp = old + delta
    seg = segment_ids(jnp.asarray(tokens), jnp.asarray(mask), toy_table(), cfg.segmentation)

    def f(lp):
        out = policy_loss(cfg, lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), segment_ids=seg,
                          entropy=jnp.asarray(ent), ref_logp=jnp.asarray(old), rng=jax.random.key(0))
        return out.loss, out.metrics

    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logp))
    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(np.asarray(grad)))
    assert np.all(np.asarray(grad)[~mask] == 0)
    for k, v in metrics.items():
        assert np.isfinite(float(v)), k


def test_padding_values_are_ignored_even_if_infinite():
    batch = random_batch(13)
    cfg = _classic("grpo")
    mask = batch.mask
    lp = np.where(mask, batch.logp, -np.inf).astype(np.float32)
    old = np.where(mask, batch.old_logp, np.nan).astype(np.float32)
    ref = np.where(mask, batch.ref_logp, -np.inf).astype(np.float32)
    (loss, grad) = jax.value_and_grad(lambda x: policy_loss(cfg, x, jnp.asarray(old), jnp.asarray(batch.adv),
                                                            jnp.asarray(mask), ref_logp=jnp.asarray(ref)).loss)(
        jnp.asarray(lp))
    clean, _, _ = _loss_and_grad(cfg, batch)
    np.testing.assert_allclose(loss, clean, rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(grad)))


class TestJit(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_policy_loss_same_with_and_without_jit(self):
        batch = random_batch(14)
        cfg = _classic("sspo")
        seg = _seg(cfg, batch)
        fn = self.variant(lambda lp: policy_loss(cfg, lp, jnp.asarray(batch.old_logp), jnp.asarray(batch.adv),
                                                 jnp.asarray(batch.mask), segment_ids=seg,
                                                 entropy=jnp.asarray(batch.entropy)).loss)
        ref = policy_loss(cfg, jnp.asarray(batch.logp), jnp.asarray(batch.old_logp), jnp.asarray(batch.adv),
                          jnp.asarray(batch.mask), segment_ids=seg, entropy=jnp.asarray(batch.entropy)).loss
        np.testing.assert_allclose(fn(jnp.asarray(batch.logp)), ref, rtol=1e-6)

    def test_vmap_over_independent_batches(self):
        batches = [random_batch(s, b=3, empty_rows=False) for s in (20, 21)]
        cfg = _classic("dapo")
        stack = lambda f: jnp.stack([jnp.asarray(f(bt)) for bt in batches])  # noqa: E731
        per = jax.vmap(lambda lp, olp, a, m: policy_loss(cfg, lp, olp, a, m).loss)(
            stack(lambda x: x.logp), stack(lambda x: x.old_logp), stack(lambda x: x.adv), stack(lambda x: x.mask))
        for i, bt in enumerate(batches):
            single = policy_loss(cfg, jnp.asarray(bt.logp), jnp.asarray(bt.old_logp), jnp.asarray(bt.adv),
                                 jnp.asarray(bt.mask)).loss
            np.testing.assert_allclose(per[i], single, rtol=1e-6)
