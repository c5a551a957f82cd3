"""Self-checks of the NumPy reference (tests/algorithms/numpy_reference.py) on hand-computed
cases and properties from ALGORITHMS.md section 10, plus finite-difference checks of its analytic
gradients. These do not need the JAX package."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tests.algorithms import numpy_reference as ref

AGG_MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def _fd_grad(fn, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (fn(xp) - fn(xm)) / (2 * h)
    return g


def _random_case(seed, B=3, T=7, scale=0.3):
    rng = np.random.default_rng(seed)
    old = rng.normal(-1.0, 0.5, (B, T))
    logp = old + rng.normal(0.0, scale, (B, T))
    mask = np.zeros((B, T), np.int64)
    for b in range(B):
        n = rng.integers(1, T + 1)
        mask[b, :n] = 1
    if B >= 3:
        mask[-1] = 0  # an all-padding row
    adv = rng.normal(0.0, 1.0, (B,))
    ent = rng.uniform(0.1, 2.0, (B, T))
    ref_logp = logp + rng.normal(0.0, 0.3, (B, T))
    seg = np.full((B, T), -1)
    for b in range(B):
        k, c = 0, 0
        for t in range(T):
            if mask[b, t]:
                seg[b, t] = k
                c += 1
                if rng.random() < 0.35:
                    k += 1
    return logp, old, adv, mask, seg, ent, ref_logp


def _kink_distance(cfg, logp, old, adv, mask, seg, ent):
    out = ref.np_policy_terms(dict(cfg, kl_beta=0.0), logp, old, adv, mask, seg, ent)
    m = np.asarray(mask).astype(bool)
    rho = out["rho"][m]
    d = np.min(
        np.concatenate(
            [np.abs(rho - (1 - out["e_lo"][m])), np.abs(rho - (1 + out["e_hi"][m]))]
            + ([np.abs(rho - cfg["dual_clip"])] if cfg.get("dual_clip") else [])
        )
    )
    return d


# ----------------------------------------------------------------------------- gradients by FD


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("form", ["sg", "broadcast"])
@pytest.mark.parametrize("gran", ["token", "subsentence", "sequence"])
def test_policy_grad_matches_finite_differences(seed, mode, form, gran):
    logp, old, adv, mask, seg, ent, ref_logp = _random_case(seed)
    rng = np.random.default_rng(100 + seed)
    adv_tok = rng.normal(0, 1, logp.shape)
    cfg = dict(
        eps_low=0.2,
        eps_high=0.28,
        dual_clip=3.0,
        granularity=gran,
        ratio_form=form,
        entropy_alpha=1.0,
        entropy_norm="ratio",
        loss_agg_mode=mode,
        kl_beta=0.05,
        kl_estimator="k3",
    )
    # The sg (GSPO-token) form is not the true derivative of its value unless the advantage is
    # constant within each segment, so finite differences check it only in that case.
    advs = (adv, adv_tok) if (form == "broadcast" or gran == "token") else (adv,)
    for a in advs:
        if _kink_distance(cfg, logp, old, a, mask, seg, ent) < 1e-4:
            continue
        _, g = ref.np_policy_loss(cfg, logp, old, a, mask, seg, ent, ref_logp)
        fd = _fd_grad(lambda x: ref.np_policy_loss(cfg, x, old, a, mask, seg, ent, ref_logp)[0], logp)
        np.testing.assert_allclose(g, fd, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_kl_grad_fd(est):
    rng = np.random.default_rng(0)
    lp, rl = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    fd = _fd_grad(lambda x: np.sum(ref.np_kl(x, rl, est)), lp)
    np.testing.assert_allclose(ref.np_kl_grad(lp, rl, est), fd, atol=1e-7)


# ----------------------------------------------------------------------------- on-policy


@pytest.mark.parametrize("gran", ["token", "subsentence", "sequence"])
@pytest.mark.parametrize("form", ["sg", "broadcast"])
def test_on_policy_token_mean_is_minus_mean_adv_and_reinforce(gran, form):
    logp, _, adv, mask, seg, ent, _ = _random_case(3)
    cfg = dict(granularity=gran, ratio_form=form, entropy_alpha=1.0, loss_agg_mode="token-mean")
    loss, grad = ref.np_policy_loss(cfg, logp, logp, adv, mask, seg, ent)
    m = mask.astype(bool)
    A = np.broadcast_to(adv[:, None], logp.shape)
    assert loss == pytest.approx(-A[m].mean())
    if form == "sg":
        np.testing.assert_allclose(grad, np.where(m, -A / m.sum(), 0.0), atol=1e-12)
    else:
        # broadcast: gradient of each token is the segment-mean of -A/N, = -A/N since A is
        # constant per row
        np.testing.assert_allclose(grad, np.where(m, -A / m.sum(), 0.0), atol=1e-12)
    lo, hi = ref.np_clip_fractions(cfg, logp, logp, adv, mask, seg, ent)
    assert lo == hi == 0.0


def test_on_policy_seq_mean_token_mean():
    logp, _, adv, mask, seg, _, _ = _random_case(4)
    cfg = dict(loss_agg_mode="seq-mean-token-mean")
    loss, _ = ref.np_policy_loss(cfg, logp, logp, adv, mask, seg)
    rows = mask.sum(1) > 0
    assert loss == pytest.approx(-adv[rows].mean())


def test_on_policy_seq_mean_token_sum_norm():
    logp, _, adv, mask, seg, _, _ = _random_case(5)
    cfg = dict(loss_agg_mode="seq-mean-token-sum-norm", loss_norm_constant=10.0)
    loss, _ = ref.np_policy_loss(cfg, logp, logp, adv, mask, seg)
    rows = mask.sum(1) > 0
    assert loss == pytest.approx(-(adv * mask.sum(1))[rows].sum() / 10.0 / rows.sum())
    cfg = dict(loss_agg_mode="seq-mean-token-sum-norm")
    loss, _ = ref.np_policy_loss(cfg, logp, logp, adv, mask, seg)
    assert loss == pytest.approx(-(adv * mask.sum(1))[rows].sum() / logp.shape[1] / rows.sum())


def test_no_valid_tokens_gives_zero():
    z = np.zeros((2, 3))
    for mode in AGG_MODES:
        loss, grad = ref.np_policy_loss(dict(loss_agg_mode=mode), z, z, np.ones(2), z)
        assert loss == 0.0 and np.all(grad == 0)


# ----------------------------------------------------------------------------- hand cases


def test_hand_token_clip_cases():
    # one row, 4 tokens, token granularity, e = 0.2
    d = np.log(np.array([[1.5, 0.5, 1.1, 0.5]]))
    old = np.zeros((1, 4))
    A = np.array([[1.0, 1.0, -1.0, -1.0]])
    mask = np.ones((1, 4))
    cfg = dict(eps_low=0.2, eps_high=0.2, loss_agg_mode="token-mean")
    out = ref.np_policy_terms(cfg, d, old, A, mask)
    # t0: A>0, rho 1.5 > 1.2 -> clipped, f = 1.2 ; t1: A>0, rho .5 -> unclipped f=.5
    # t2: A<0, rho 1.1 inside -> f=-1.1 ; t3: A<0, rho .5 < .8 -> clipped f = -0.8
    np.testing.assert_allclose(out["per_token_loss"], [[-1.2, -0.5, 1.1, 0.8]])
    assert out["loss"] == pytest.approx((-1.2 - 0.5 + 1.1 + 0.8) / 4)
    np.testing.assert_allclose(out["grad"], [[0.0, -0.5 / 4, 1.1 / 4, 0.0]])
    assert ref.np_clip_fractions(cfg, d, old, A, mask) == (0.25, 0.25)


def test_dual_clip_caps_negative_advantage():
    d = np.log(np.array([[5.0, 2.0]]))
    A = np.array([[-1.0, -1.0]])
    cfg = dict(eps_low=0.2, eps_high=0.2, dual_clip=3.0, loss_agg_mode="seq-mean-token-sum")
    out = ref.np_policy_terms(cfg, d, np.zeros((1, 2)), A, np.ones((1, 2)))
    np.testing.assert_allclose(out["per_token_loss"], [[3.0, 2.0]])
    np.testing.assert_allclose(out["grad"], [[0.0, 2.0]])


def test_gspo_sequence_ratio_is_geometric_mean():
    d = np.array([[0.1, -0.3, 0.5, 9.0]])
    mask = np.array([[1, 1, 1, 0]])
    out = ref.np_policy_terms(dict(granularity="sequence"), d, np.zeros_like(d), np.ones(1), mask)
    np.testing.assert_allclose(out["rho"][0, :3], math.exp(0.1))
    assert out["rho"][0, 3] == 0.0


def test_segment_ratio_between_min_and_max_and_permutation_invariant():
    logp, old, adv, mask, seg, ent, _ = _random_case(7, B=2, T=16, scale=0.5)
    cfg = dict(granularity="subsentence", entropy_alpha=1.0)
    out = ref.np_policy_terms(cfg, logp, old, adv, mask, seg, ent)
    w = np.exp(logp - old)
    for b in range(2):
        for k in set(seg[b][seg[b] >= 0]):
            sel = seg[b] == k
            assert w[b, sel].min() - 1e-12 <= out["rho"][b, sel][0] <= w[b, sel].max() + 1e-12
    # permuting tokens inside each segment changes neither loss nor the permuted gradient
    rng = np.random.default_rng(0)
    lp2, old2, ent2 = logp.copy(), old.copy(), ent.copy()
    for b in range(2):
        p = np.arange(16)
        for k in set(seg[b][seg[b] >= 0]):
            idx = np.nonzero(seg[b] == k)[0]
            p[idx] = rng.permutation(idx)
        lp2[b], old2[b], ent2[b] = logp[b, p], old[b, p], ent[b, p]
    out2 = ref.np_policy_terms(cfg, lp2, old2, adv, mask, seg, ent2)
    assert out2["loss"] == pytest.approx(out["loss"])
    np.testing.assert_allclose(np.sort(out2["grad"], 1), np.sort(out["grad"], 1), atol=1e-14)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_sg_and_broadcast_equal_when_adv_constant_per_segment(mode):
    logp, old, adv, mask, seg, ent, _ = _random_case(8, B=3, T=16)
    base = dict(granularity="subsentence", entropy_alpha=1.0, loss_agg_mode=mode, dual_clip=3.0)
    l1, g1 = ref.np_policy_loss(dict(base, ratio_form="sg"), logp, old, adv, mask, seg, ent)
    l2, g2 = ref.np_policy_loss(dict(base, ratio_form="broadcast"), logp, old, adv, mask, seg, ent)
    assert l1 == pytest.approx(l2)
    if mode in ("token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean"):
        # the weight is constant within a row, hence within a segment
        np.testing.assert_allclose(g1, g2, atol=1e-14)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_token_granularity_alpha0_equals_grpo(mode):
    logp, old, adv, mask, seg, ent, ref_logp = _random_case(9)
    sspo = dict(granularity="token", entropy_alpha=0.0, eps_low=0.2, eps_high=0.28,
                loss_agg_mode=mode)
    grpo = dict(sspo, granularity="subsentence")
    tok_seg = ref.np_token_segment_ids(mask)
    l1, g1 = ref.np_policy_loss(sspo, logp, old, adv, mask, seg, ent)
    l2, g2 = ref.np_policy_loss(grpo, logp, old, adv, mask, tok_seg, None)
    assert l1 == pytest.approx(l2)
    np.testing.assert_allclose(g1, g2, atol=1e-14)


def test_entropy_bounds_properties():
    logp, old, adv, mask, seg, ent, _ = _random_case(10, B=3, T=16)
    for norm in ("ratio", "zscore", "none"):
        cfg = dict(granularity="subsentence", entropy_alpha=1.0, entropy_norm=norm,
                   eps_low=0.2, eps_high=0.28, entropy_g_min=0.5, entropy_g_max=2.0)
        out = ref.np_policy_terms(cfg, logp, old, adv, mask, seg, ent)
        m = mask.astype(bool)
        assert np.all(out["e_lo"][m] >= 0.1 - 1e-12) and np.all(out["e_lo"][m] <= 0.4 + 1e-12)
        # monotone in segment entropy
        hbar, gs = [], []
        for b in range(3):
            for k in set(seg[b][seg[b] >= 0]):
                sel = seg[b] == k
                hbar.append(ent[b, sel].mean())
                gs.append(out["g"][b, sel][0])
        order = np.argsort(hbar)
        assert np.all(np.diff(np.array(gs)[order]) >= -1e-12)
        # alpha = 0: constant bounds
        out0 = ref.np_policy_terms(dict(cfg, entropy_alpha=0.0), logp, old, adv, mask, seg, ent)
        np.testing.assert_allclose(out0["e_hi"][m], 0.28)


def test_entropy_ratio_hand_case():
    # two rows, one segment each; Hbar = 1 and 3, batch mean 2 -> h = .5, 1.5 -> g = .5, 1.5
    logp = np.zeros((2, 2))
    ent = np.array([[1.0, 1.0], [2.0, 4.0]])
    cfg = dict(granularity="sequence", entropy_alpha=1.0, eps_low=0.2, eps_high=0.28)
    out = ref.np_policy_terms(cfg, logp, logp, np.ones(2), np.ones((2, 2)), None, ent)
    np.testing.assert_allclose(out["g"], [[0.5, 0.5], [1.5, 1.5]])
    out = ref.np_policy_terms(dict(cfg, entropy_norm="zscore"), logp, logp, np.ones(2),
                              np.ones((2, 2)), None, ent)
    # z = -1, +1 (population std 1) -> g = 1 + z/(1+1e-6)
    np.testing.assert_allclose(out["g"][:, 0], [0.5, 2.0], rtol=1e-5)  # clipped at 0.5


def test_log_ratio_clamp_broadcast_zero_grad():
    d = np.array([[30.0, 30.0]])
    A = np.array([-1.0])
    cfg = dict(granularity="sequence", ratio_form="broadcast", log_ratio_clamp=20.0)
    out = ref.np_policy_terms(cfg, d, np.zeros_like(d), A, np.ones((1, 2)))
    assert np.isfinite(out["loss"]) and out["rho"][0, 0] == pytest.approx(math.exp(20.0))
    assert np.all(out["grad"] == 0)


# ----------------------------------------------------------------------------- segmentation

# vocab: 0 'a', 1 'b', 2 '.', 3 ',', 4 '3', 5 '14', 6 '\n', 7 'x7' (ends digit), 8 '9y'
IS_DELIM = np.array([0, 0, 1, 1, 0, 0, 1, 0, 0], bool)
IS_DEC = np.array([0, 0, 1, 1, 0, 0, 0, 0, 0], bool)
ENDS_D = np.array([0, 0, 0, 0, 1, 1, 0, 1, 0], bool)
STARTS_D = np.array([0, 0, 0, 0, 1, 1, 0, 0, 1], bool)


def _seg(tokens, mask=None, **kw):
    tokens = np.asarray(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if mask is None:
        mask = np.ones_like(tokens)
    mask = np.asarray(mask)
    if mask.ndim == 1:
        mask = mask[None]
    return ref.np_segment_ids(tokens, mask, IS_DELIM, IS_DEC, ENDS_D, STARTS_D, **kw)


def test_seg_delimiter_closes_segment():
    np.testing.assert_array_equal(_seg([0, 1, 2, 0, 3, 1, 6]), [[0, 0, 0, 1, 1, 2, 2]])
    np.testing.assert_array_equal(_seg([2, 2, 0]), [[0, 1, 2]])


def test_seg_decimal_protection():
    # "3 . 14 a ." -> '.' between digits is not a boundary
    np.testing.assert_array_equal(_seg([4, 2, 5, 0, 2, 0]), [[0, 0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(
        _seg([4, 2, 5, 0, 2, 0], protect_decimals=False), [[0, 0, 1, 1, 1, 2]]
    )
    # x7 , 9y : ends/starts with digit -> protected
    np.testing.assert_array_equal(_seg([7, 3, 8, 2, 0]), [[0, 0, 0, 0, 1]])
    # '\n' is a delimiter but not a decimal separator -> never protected
    np.testing.assert_array_equal(_seg([4, 6, 5]), [[0, 0, 1]])
    # neighbour masked -> not protected
    np.testing.assert_array_equal(_seg([4, 2, 5, 0], mask=[1, 1, 0, 1]), [[0, 0, -1, 1]])
    # at the row edge -> not protected
    np.testing.assert_array_equal(_seg([4, 2]), [[0, 0]])
    np.testing.assert_array_equal(_seg([2, 5, 0]), [[0, 1, 1]])


def test_seg_padding_and_gaps():
    np.testing.assert_array_equal(_seg([0, 0, 0, 0], mask=[0, 1, 1, 0]), [[-1, 0, 0, -1]])
    np.testing.assert_array_equal(_seg([0, 0, 0, 0], mask=[1, 0, 1, 1]), [[0, -1, 1, 1]])
    np.testing.assert_array_equal(_seg([0, 2, 0], mask=[0, 0, 0]), [[-1, -1, -1]])


def test_seg_min_len():
    # raw segments lengths: [2, 1, 3, 1] -> tokens a . | . | a b . | a
    toks = [0, 2, 2, 0, 1, 2, 0]
    np.testing.assert_array_equal(_seg(toks), [[0, 0, 1, 2, 2, 2, 3]])
    np.testing.assert_array_equal(_seg(toks, min_segment_len=2), [[0, 0, 0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(_seg(toks, min_segment_len=3), [[0, 0, 0, 1, 1, 1, 1]])
    # first segment short: ". a b ." lengths [1, 3] -> seg 1 merges into seg 0
    np.testing.assert_array_equal(_seg([2, 0, 1, 2], min_segment_len=2), [[0, 0, 0, 0]])
    # lengths [1, 1, 3] with min 2: seg1 -> seg0 (len 2 now, ok); seg2 stays
    np.testing.assert_array_equal(_seg([2, 2, 0, 1, 2], min_segment_len=2), [[0, 0, 1, 1, 1]])
    # lengths [1, 1, 3] with min 3: one pass merges seg1 into seg0 -> len 2 < 3 -> absorbs next
    np.testing.assert_array_equal(_seg([2, 2, 0, 1, 2], min_segment_len=3), [[0, 0, 0, 0, 0]])
    # one pass over the ORIGINAL lengths: [3, 1, 1] min 2 -> both short ones merge into seg 0
    np.testing.assert_array_equal(_seg([0, 1, 2, 2, 2], min_segment_len=2), [[0, 0, 0, 0, 0]])


def test_seg_max_len():
    toks = [0] * 7 + [2] + [0] * 2
    # raw: one segment of 8, then one of 2
    np.testing.assert_array_equal(_seg(toks), [[0] * 8 + [1] * 2])
    # max 3: n=8 -> p=3 pieces, j*3//8: 0,0,0,1,1,1,2,2
    np.testing.assert_array_equal(_seg(toks, max_segment_len=3), [[0, 0, 0, 1, 1, 1, 2, 2, 3, 3]])
    # max 1 -> each token its own segment
    np.testing.assert_array_equal(_seg(toks, max_segment_len=1), [list(range(10))])
    # min then max
    np.testing.assert_array_equal(
        _seg(toks, min_segment_len=3, max_segment_len=4), [[0, 0, 0, 0, 1, 1, 1, 2, 2, 2]]
    )


def test_seg_granularities():
    toks, mask = [0, 2, 0, 0], [0, 1, 1, 1]
    np.testing.assert_array_equal(_seg(toks, mask, granularity="token"), [[-1, 0, 1, 2]])
    np.testing.assert_array_equal(_seg(toks, mask, granularity="sequence"), [[-1, 0, 0, 0]])


def test_seg_properties_random():
    rng = np.random.default_rng(0)
    for _ in range(30):
        toks = rng.integers(0, 9, (2, 12))
        mask = np.zeros((2, 12), int)
        for b in range(2):
            s, e = sorted(rng.integers(0, 13, 2))
            mask[b, s:e] = 1
        mn, mx = int(rng.integers(1, 4)), [None, 2, 5][rng.integers(0, 3)]
        ids = _seg(toks, mask, min_segment_len=mn, max_segment_len=mx)
        for b in range(2):
            v = ids[b][mask[b] == 1]
            assert np.all(ids[b][mask[b] == 0] == -1)
            if len(v):
                assert v[0] == 0 and np.all(np.diff(v) >= 0) and np.all(np.diff(v) <= 1)
                counts = np.bincount(v)
                if mx is not None:
                    assert counts.max() <= mx


# ----------------------------------------------------------------------------- advantages


def test_group_zscore():
    r = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.0, 2.0, 1.0, 3.0])
    a = ref.np_group_zscore(r, 4)
    for g in a.reshape(-1, 4):
        assert abs(g.sum()) < 1e-12
    assert np.all(a[4:8] == 0.0)
    std = np.std([0, 2, 1, 3], ddof=1)
    np.testing.assert_allclose(a[8:], (np.array([0, 2, 1, 3]) - 1.5) / (std + 1e-6))
    assert np.all(ref.np_group_zscore(r, 1) == 0.0)
    assert ref.np_zero_var_group_fraction(r, 4) == pytest.approx(1 / 3)


def test_group_mean_and_rloo():
    r = np.array([1.0, 0.0, 0.0, 1.0, 0.3, 0.3])
    np.testing.assert_allclose(ref.np_group_mean(r, 2), [0.5, -0.5, -0.5, 0.5, 0.0, 0.0])
    assert np.all(ref.np_group_mean(r, 2)[4:] == 0.0)
    r = np.array([1.0, 0.0, 0.0])
    np.testing.assert_allclose(ref.np_rloo(r, 3), [1.0, -0.5, -0.5])
    assert np.all(ref.np_rloo(r, 1) == 0)


def test_gae_gamma_lambda_one_gives_R_minus_V():
    mask = np.array([[1, 1, 1, 0], [0, 1, 0, 1], [0, 0, 0, 0]])
    R = np.array([1.0, 0.5, 2.0])
    tr = ref.np_outcome_token_rewards(R, mask)
    np.testing.assert_array_equal(tr, [[0, 0, 1, 0], [0, 0, 0, 0.5], [0, 0, 0, 0]])
    V = np.arange(12, dtype=float).reshape(3, 4) / 10
    A, G = ref.np_gae(tr, V, mask, 1.0, 1.0)
    np.testing.assert_allclose(A, np.where(mask == 1, R[:, None] - V, 0.0))
    np.testing.assert_allclose(G, np.where(mask == 1, R[:, None], 0.0))


def test_gae_hand_case():
    # row: valid tokens at 0, 2 (gap at 1); rewards only at t=2
    mask = np.array([[1, 0, 1]])
    tr = np.array([[0.0, 5.0, 1.0]])  # reward on the masked token is ignored
    V = np.array([[0.2, 9.0, 0.4]])
    g, lam = 0.9, 0.8
    A, G = ref.np_gae(tr, V, mask, g, lam)
    d2 = 1.0 - 0.4
    d0 = 0.0 + g * 0.4 - 0.2
    np.testing.assert_allclose(A, [[d0 + g * lam * d2, 0.0, d2]])
    np.testing.assert_allclose(G, [[d0 + g * lam * d2 + 0.2, 0.0, d2 + 0.4]])


def test_sequence_baseline_and_bce():
    R = np.array([1.0, 0.0, 1.0])
    z = np.array([0.3, -2.0, 40.0])
    A = ref.np_sequence_baseline(R, z)
    np.testing.assert_allclose(A, R - 1 / (1 + np.exp(-z)))
    loss, grad = ref.np_bce_critic_loss(z, R)
    p = 1 / (1 + np.exp(-z))
    log_p, log_1mp = -np.logaddexp(0, -z), -np.logaddexp(0, z)
    exp_loss = -np.mean(R * log_p + (1 - R) * log_1mp)
    assert loss == pytest.approx(exp_loss, rel=1e-9)
    np.testing.assert_allclose(grad, -A / 3)  # dBCE/dz = V - R = -A
    fd = _fd_grad(lambda x: ref.np_bce_critic_loss(x, R)[0], z)
    np.testing.assert_allclose(grad, fd, atol=1e-8)


def test_kl_estimators():
    lp = np.array([-1.0, -2.0, -0.5])
    rl = np.array([-1.0, -1.0, -2.0])
    k3 = ref.np_kl(lp, rl, "k3")
    assert k3[0] == 0.0 and np.all(k3 >= 0)
    np.testing.assert_allclose(ref.np_kl(lp, rl, "k1"), lp - rl)
    np.testing.assert_allclose(ref.np_kl(lp, rl, "k2"), 0.5 * (rl - lp) ** 2)
    np.testing.assert_allclose(k3, np.exp(rl - lp) - (rl - lp) - 1)


def test_clipped_value_loss():
    V = np.array([[1.0, 0.0, 2.0, 5.0]])
    Vo = np.array([[0.0, 0.1, 1.0, 5.0]])
    G = np.array([[0.0, 1.0, 3.0, 0.0]])
    m = np.array([[1, 1, 1, 0]])
    loss, grad = ref.np_clipped_value_loss(V, Vo, G, m, 0.5)
    # t0: V=1, Vc=.5, G=0: max(1, .25) = 1 -> grad (V-G)=1
    # t1: V=0 inside [-.4,.6]: (0-1)^2 = 1 -> grad -1
    # t2: V=2, Vc=1.5, G=3: max(1, 2.25)=2.25 clipped branch -> grad 0
    assert loss == pytest.approx(0.5 * (1 + 1 + 2.25) / 3)
    np.testing.assert_allclose(grad, [[1 / 3, -1 / 3, 0.0, 0.0]])
    fd = _fd_grad(lambda x: ref.np_clipped_value_loss(x, Vo, G, m, 0.5)[0], V)
    np.testing.assert_allclose(grad, fd, atol=1e-8)


def test_dapo_overlong():
    out = ref.np_dapo_overlong_penalty(np.array([10, 12, 14, 16, 17]), 16, 4)
    np.testing.assert_allclose(out, [0.0, 0.0, -0.5, -1.0, -1.0])


def test_fd_grad_with_per_token_adv_and_entropy_variants():
    for seed, norm, alpha in itertools.product([11, 12], ["ratio", "zscore", "none"], [0.0, 1.0]):
        logp, old, _, mask, seg, ent, ref_logp = _random_case(seed, B=2, T=7)
        adv = np.random.default_rng(seed).normal(size=(2, 7))
        cfg = dict(granularity="subsentence", ratio_form="broadcast", entropy_alpha=alpha,
                   entropy_norm=norm, eps_low=0.2, eps_high=0.28, kl_beta=0.1, kl_estimator="k2",
                   loss_agg_mode="seq-mean-token-mean")
        if _kink_distance(cfg, logp, old, adv, mask, seg, ent) < 1e-4:
            continue
        _, g = ref.np_policy_loss(cfg, logp, old, adv, mask, seg, ent, ref_logp)
        fd = _fd_grad(lambda x: ref.np_policy_loss(cfg, x, old, adv, mask, seg, ent, ref_logp)[0],
                      logp)
        np.testing.assert_allclose(g, fd, atol=1e-7, rtol=1e-5)
