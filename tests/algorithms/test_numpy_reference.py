"""The JAX package against the independent NumPy reference (tests/algorithms/numpy_reference.py).

Inputs are small random arrays (several seeds, B in {1, 3, 5}, T in {1, 7, 16}) with random
response masks, including an all-padding row and an empty response (EOS only), moderate
log-ratios so that token and segment ratios straddle the clip bounds, and garbage values on padded
positions. Inputs are drawn in float32 so that both sides see the same numbers; JAX runs in
float32, the reference in float64. Inputs that sit within 1e-4 of a clip kink are redrawn.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sspo_jax.algorithms import DelimiterTable, policy_loss, segment_ids
from sspo_jax.algorithms import advantages as adv_mod
from sspo_jax.algorithms import kl as kl_mod
from sspo_jax.algorithms import losses as losses_mod
from tests.algorithms import numpy_reference as ref
from tests.algorithms.batches import classic_preset as _classic

PRESETS = ["grpo", "dapo", "dr_grpo", "gspo", "gspo_token", "sspo", "ppo", "sppo"]
AGG_MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
SHAPES = [(1, 1), (1, 7), (3, 7), (3, 16), (5, 1), (5, 16)]
LOSS_RTOL, LOSS_ATOL = 1e-4, 1e-6
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6
V = 12  # vocabulary size of the random delimiter table


# ------------------------------------------------------------------------------------- inputs


def _f32(x):
    return np.asarray(x, np.float32)


def _random_table(rng, v=V):
    is_delim = rng.random(v) < 0.3
    is_dec = rng.random(v) < 0.3
    ends = rng.random(v) < 0.4
    starts = rng.random(v) < 0.4
    return is_delim, is_dec, ends, starts


def _jtable(tab):
    d, s, e, st = (jnp.asarray(x, dtype=bool) for x in tab)
    return DelimiterTable(is_delim=d, is_decimal_sep=s, ends_with_digit=e, starts_with_digit=st)


def _random_mask(rng, B, T, contiguous=True):
    mask = np.zeros((B, T), np.int32)
    for b in range(B):
        if contiguous:
            start = int(rng.integers(0, T // 4 + 1))
            end = int(rng.integers(start + 1, T + 1))
            mask[b, start:end] = 1
        else:
            mask[b] = rng.random(T) < 0.7
    if B >= 3:
        mask[1] = 0  # an all-padding row
        mask[2] = 0
        mask[2, int(rng.integers(0, T))] = 1  # an empty response: EOS only
    return mask


@dataclasses.dataclass
class Case:
    tokens: np.ndarray
    table: tuple
    logp: np.ndarray
    old_logp: np.ndarray
    adv_seq: np.ndarray
    adv_tok: np.ndarray
    mask: np.ndarray
    entropy: np.ndarray
    ref_logp: np.ndarray


def _make_case(seed, B, T, scale=0.35, pad_garbage=5.0, contiguous=True):
    rng = np.random.default_rng(seed)
    mask = _random_mask(rng, B, T, contiguous)
    tokens = rng.integers(0, V, (B, T)).astype(np.int32)
    old = rng.normal(-1.5, 0.7, (B, T))
    logp = old + rng.normal(0.0, scale, (B, T))
    # one extreme-ish token in the batch so that some segments are pulled across a bound
    logp[rng.integers(0, B), rng.integers(0, T)] += rng.choice([-1.0, 1.0])
    ref_logp = logp + rng.normal(0.0, 0.3, (B, T))
    garbage = rng.uniform(-pad_garbage, pad_garbage, (B, T))
    logp = np.where(mask == 1, logp, garbage)
    ref_logp = np.where(mask == 1, ref_logp, -garbage)
    entropy = np.where(mask == 1, rng.uniform(0.05, 3.0, (B, T)), rng.uniform(0, 50, (B, T)))
    return Case(
        tokens=tokens,
        table=_random_table(rng),
        logp=_f32(logp),
        old_logp=_f32(old),
        adv_seq=_f32(rng.normal(0.0, 1.0, (B,))),
        adv_tok=_f32(rng.normal(0.0, 1.0, (B, T))),
        mask=mask,
        entropy=_f32(entropy),
        ref_logp=_f32(ref_logp),
    )


def _seg_kwargs(seg_cfg):
    return dict(
        granularity=seg_cfg.granularity,
        protect_decimals=seg_cfg.protect_decimals,
        min_segment_len=seg_cfg.min_segment_len,
        max_segment_len=seg_cfg.max_segment_len,
    )


def _np_seg(case, seg_cfg):
    return ref.np_segment_ids(case.tokens, case.mask, *case.table, **_seg_kwargs(seg_cfg))


def _kink_distance(cfg_dict, case, adv, seg):
    out = ref.np_policy_terms(
        dict(cfg_dict, kl_beta=0.0), case.logp, case.old_logp, adv, case.mask, seg, case.entropy
    )
    m = case.mask.astype(bool)
    if not m.any():
        return np.inf
    rho = out["rho"][m]
    ds = [np.abs(rho - (1 - out["e_lo"][m])), np.abs(rho - (1 + out["e_hi"][m]))]
    if cfg_dict.get("dual_clip") is not None:
        ds.append(np.abs(rho - cfg_dict["dual_clip"]))
    return float(min(np.min(d / np.maximum(rho, 1e-30)) for d in ds))


def _case_away_from_kinks(cfg, seed, B, T, adv_kind, **kw):
    """A random case whose ratios are at least 1e-4 (relative) from every clip kink."""
    cfg_dict = ref.cfg_to_dict(cfg)
    for attempt in range(50):
        case = _make_case(seed * 1000 + attempt, B, T, **kw)
        seg = _np_seg(case, cfg.segmentation)
        adv = case.adv_seq if adv_kind == "seq" else case.adv_tok
        if _kink_distance(cfg_dict, case, adv, seg) > 1e-4:
            return case, seg, adv
    raise AssertionError("could not draw a case away from the clip kinks")


# ------------------------------------------------------------------------------------- JAX side


def _jax_loss_grad(cfg, case, adv, seg, with_entropy=True, with_ref=True):
    """(loss, d loss / d logp, metrics) from the package, loss = loss_sum / denominator."""
    ent = jnp.asarray(case.entropy) if with_entropy else None
    ref_lp = jnp.asarray(case.ref_logp) if with_ref else None
    args = (jnp.asarray(case.old_logp), jnp.asarray(adv), jnp.asarray(case.mask))
    seg_j = jnp.asarray(seg, dtype=jnp.int32)

    def f(lp):
        out = policy_loss(cfg, lp, *args, segment_ids=seg_j, entropy=ent, ref_logp=ref_lp)
        return out.loss, out.metrics

    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(case.logp))
    return float(loss), np.asarray(grad, np.float64), {k: np.asarray(v) for k, v in metrics.items()}


def _compare(cfg, case, adv, seg, with_entropy=True, with_ref=True, check_grad=True):
    cfg_dict = ref.cfg_to_dict(cfg)
    ent = case.entropy if with_entropy else None
    ref_lp = case.ref_logp if with_ref else None
    exp = ref.np_policy_terms(cfg_dict, case.logp, case.old_logp, adv, case.mask, seg, ent, ref_lp)
    loss, grad, metrics = _jax_loss_grad(cfg, case, adv, seg, with_entropy, with_ref)
    info = f"cfg={cfg_dict} B,T={case.mask.shape}"
    assert np.isfinite(loss), info
    assert np.all(np.isfinite(grad)), info
    np.testing.assert_allclose(loss, exp["loss"], rtol=LOSS_RTOL, atol=LOSS_ATOL, err_msg=info)
    if check_grad:
        np.testing.assert_allclose(grad, exp["grad"], rtol=GRAD_RTOL, atol=GRAD_ATOL, err_msg=info)
    n = case.mask.sum()
    lo = exp["clipped_low"].sum() / n if n else 0.0
    hi = exp["clipped_high"].sum() / n if n else 0.0
    np.testing.assert_allclose(metrics["clip_frac_low"], lo, atol=1e-6, err_msg=info)
    np.testing.assert_allclose(metrics["clip_frac_high"], hi, atol=1e-6, err_msg=info)
    return exp


def _with_seg(cfg, **seg_changes):
    return dataclasses.replace(cfg, segmentation=dataclasses.replace(cfg.segmentation, **seg_changes))


# ------------------------------------------------------------------------------------- policy loss


@pytest.mark.parametrize("name", PRESETS)
def test_preset_defaults_match_reference(name):
    cfg = _classic(name)
    for (B, T), adv_kind, seed in zip(SHAPES, itertools.cycle(["seq", "tok"]), itertools.count()):
        case, seg, adv = _case_away_from_kinks(cfg, seed, B, T, adv_kind)
        _compare(cfg, case, adv, seg, with_ref=cfg.kl_beta > 0)
        if cfg.entropy_alpha == 0 and B == 3:  # entropy is optional when alpha = 0
            _compare(cfg, case, adv, seg, with_entropy=False, with_ref=cfg.kl_beta > 0)


@pytest.mark.parametrize("name", ["grpo", "sspo"])
@pytest.mark.parametrize(
    "mode,norm_const", [(m, None) for m in AGG_MODES] + [("seq-mean-token-sum-norm", 11.0)]
)
def test_agg_modes_match_reference(name, mode, norm_const):
    cfg = _classic(name, loss_agg_mode=mode, loss_norm_constant=norm_const)
    for seed, (B, T) in enumerate([(1, 7), (3, 16), (5, 7)]):
        for adv_kind in ("seq", "tok"):
            case, seg, adv = _case_away_from_kinks(cfg, 10 + seed, B, T, adv_kind)
            _compare(cfg, case, adv, seg, with_ref=cfg.kl_beta > 0)


@pytest.mark.parametrize("form", ["sg", "broadcast"])
@pytest.mark.parametrize("granularity", ["token", "subsentence", "sequence"])
def test_ratio_forms_and_granularities_match_reference(form, granularity):
    cfg = _with_seg(_classic("sspo", ratio_form=form), granularity=granularity)
    for seed, (B, T) in enumerate([(3, 7), (5, 16), (1, 16)]):
        for adv_kind in ("seq", "tok"):
            case, seg, adv = _case_away_from_kinks(cfg, 20 + seed, B, T, adv_kind)
            _compare(cfg, case, adv, seg)


@pytest.mark.parametrize("name", ["grpo", "sspo", "gspo"])
def test_dual_clip_matches_reference(name):
    cfg = _classic(name, dual_clip=3.0, kl_beta=0.0)
    hit = False
    for seed, (B, T) in enumerate([(3, 7), (5, 16)]):
        case, seg, adv = _case_away_from_kinks(cfg, 30 + seed, B, T, "tok", scale=1.2)
        exp = _compare(cfg, case, adv, seg)
        m = case.mask.astype(bool)
        hit |= bool(np.any((exp["A"] < 0) & (exp["rho"] > 3.0) & m))
    if name != "gspo":
        assert hit, "the test inputs never reached the dual-clip cap"


@pytest.mark.parametrize("norm", ["ratio", "zscore", "none"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("granularity", ["subsentence", "token"])
def test_entropy_bounds_match_reference(norm, alpha, granularity):
    cfg = _with_seg(_classic("sspo", entropy_alpha=alpha, entropy_norm=norm), granularity=granularity)
    for seed, (B, T) in enumerate([(3, 16), (5, 7)]):
        case, seg, adv = _case_away_from_kinks(cfg, 40 + seed, B, T, "seq")
        _compare(cfg, case, adv, seg)


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
@pytest.mark.parametrize("name", ["grpo", "sspo"])
def test_kl_term_matches_reference(est, name):
    cfg = _classic(name, kl_beta=0.1, kl_estimator=est)
    for seed, (B, T) in enumerate([(3, 7), (5, 16)]):
        case, seg, adv = _case_away_from_kinks(cfg, 50 + seed, B, T, "tok")
        _compare(cfg, case, adv, seg)


@pytest.mark.parametrize(
    "min_len,max_len", [(1, None), (2, None), (3, None), (1, 2), (1, 4), (2, 4), (3, 7)]
)
def test_segmented_loss_end_to_end(min_len, max_len):
    """JAX segment_ids -> JAX policy_loss against the same NumPy chain."""
    cfg = _with_seg(_classic("sspo"), min_segment_len=min_len, max_segment_len=max_len)
    for seed, (B, T) in enumerate([(3, 16), (5, 7)]):
        case, seg, adv = _case_away_from_kinks(cfg, 60 + seed, B, T, "seq")
        seg_j = segment_ids(
            jnp.asarray(case.tokens), jnp.asarray(case.mask), _jtable(case.table), cfg.segmentation
        )
        np.testing.assert_array_equal(np.asarray(seg_j), seg)
        _compare(cfg, case, adv, np.asarray(seg_j))


@pytest.mark.parametrize("form", ["sg", "broadcast"])
def test_log_ratio_clamp_active(form):
    """Segment log-ratios beyond the clamp: value exp(+-c); in both forms the clamped segments get
    no gradient (issue 22: the sg form used to pass an exp(c)-scaled gradient there)."""
    c = 0.3
    cfg = _with_seg(
        _classic("sspo", ratio_form=form, log_ratio_clamp=c, entropy_alpha=0.0),
        granularity="sequence",
    )
    n_clamped_neg = 0  # clamped tokens with A < 0: the unclipped branch, where a gradient would flow
    for seed, (B, T) in enumerate([(3, 7), (5, 16), (5, 7)]):
        case, seg, adv = _case_away_from_kinks(cfg, 70 + seed, B, T, "tok", scale=1.5)
        exp = _compare(cfg, case, adv, seg)
        m = case.mask.astype(bool)
        clamped = np.abs(np.abs(np.log(np.where(m, exp["rho"], 1.0))) - c) < 1e-9
        n_clamped_neg += int(np.sum(clamped & m & (exp["A"] < 0)))
    assert n_clamped_neg > 0


def test_extreme_padding_values_are_ignored():
    cfg = _classic("sspo", kl_beta=0.05)
    for seed, (B, T) in enumerate([(3, 7), (5, 16)]):
        case, seg, adv = _case_away_from_kinks(cfg, 80 + seed, B, T, "tok", pad_garbage=1e4)
        _compare(cfg, case, adv, seg)


@pytest.mark.parametrize("name", ["grpo", "sspo", "gspo", "dr_grpo"])
def test_no_valid_tokens_gives_zero_loss(name):
    cfg = _classic(name)
    case = _make_case(90, 3, 7)
    case.mask[:] = 0
    seg = np.full((3, 7), -1)
    ref_lp = jnp.asarray(case.ref_logp) if cfg.kl_beta > 0 else None
    args = (jnp.asarray(case.old_logp), jnp.asarray(case.adv_seq), jnp.asarray(case.mask))

    def f(lp):
        out = policy_loss(cfg, lp, *args, segment_ids=jnp.asarray(seg, jnp.int32),
                          entropy=jnp.asarray(case.entropy), ref_logp=ref_lp)
        return out.loss_sum, out

    grad, out = jax.grad(f, has_aux=True)(jnp.asarray(case.logp))
    assert float(out.loss_sum) == 0.0
    assert np.all(np.asarray(grad) == 0.0)
    for v in out.metrics.values():
        assert np.all(np.isfinite(np.asarray(v)))


@pytest.mark.parametrize("name", ["grpo", "sspo", "gspo", "dr_grpo"])
def test_empty_batch_gives_zero_loss(name):
    """An empty batch: loss_sum 0 and the raw denominator 0 (kept raw so that sums over
    micro-batches stay exact); `out.loss` divides safely and is 0."""
    cfg = _classic(name)
    case = _make_case(90, 3, 7)
    case.mask[:] = 0
    out = policy_loss(
        cfg, jnp.asarray(case.logp), jnp.asarray(case.old_logp), jnp.asarray(case.adv_seq),
        jnp.asarray(case.mask), segment_ids=jnp.full((3, 7), -1, jnp.int32),
        entropy=jnp.asarray(case.entropy),
        ref_logp=jnp.asarray(case.ref_logp) if cfg.kl_beta > 0 else None,
    )
    assert float(out.loss_sum) == 0.0 and float(out.denominator) == 0.0
    assert float(out.loss) == 0.0


@pytest.mark.parametrize("name", ["grpo", "sspo", "gspo_token", "ppo"])
def test_on_policy_is_reinforce(name):
    cfg = _classic(name, kl_beta=0.0)
    case = _make_case(91, 5, 16)
    case.old_logp = case.logp.copy()
    seg = _np_seg(case, cfg.segmentation)
    exp = _compare(cfg, case, case.adv_tok, seg)
    assert exp["clipped_low"].sum() == exp["clipped_high"].sum() == 0


# ------------------------------------------------------------------------------------- segments


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("B,T", [(1, 1), (1, 7), (3, 16), (5, 7)])
def test_segment_ids_match_reference(seed, B, T):
    rng = np.random.default_rng(1000 + seed)
    base = _classic("sspo").segmentation
    settings = [
        dict(granularity="subsentence", protect_decimals=True, min_segment_len=1, max_segment_len=None),
        dict(granularity="subsentence", protect_decimals=False, min_segment_len=1, max_segment_len=None),
        dict(granularity="subsentence", protect_decimals=True, min_segment_len=2, max_segment_len=None),
        dict(granularity="subsentence", protect_decimals=True, min_segment_len=2, max_segment_len=4),
        dict(granularity="subsentence", protect_decimals=True, min_segment_len=3, max_segment_len=6),
        dict(granularity="subsentence", protect_decimals=True, min_segment_len=1, max_segment_len=2),
        dict(granularity="token", protect_decimals=True, min_segment_len=1, max_segment_len=None),
        dict(granularity="sequence", protect_decimals=True, min_segment_len=1, max_segment_len=None),
    ]
    for contiguous in (True, False):
        tab = _random_table(rng)
        tokens = rng.integers(0, V, (B, T)).astype(np.int32)
        mask = _random_mask(rng, B, T, contiguous)
        for s in settings:
            seg_cfg = dataclasses.replace(base, **s)
            got = segment_ids(jnp.asarray(tokens), jnp.asarray(mask), _jtable(tab), seg_cfg)
            exp = ref.np_segment_ids(tokens, mask, *tab, **s)
            np.testing.assert_array_equal(
                np.asarray(got), exp, err_msg=f"{s} tokens={tokens.tolist()} mask={mask.tolist()}"
            )


# vocab for hand cases: 0 'a', 1 'b', 2 '.', 3 ',', 4 '3', 5 '14', 6 '\n', 7 'x7', 8 '9y'
_HAND_TABLE = (
    np.array([0, 0, 1, 1, 0, 0, 1, 0, 0], bool),
    np.array([0, 0, 1, 1, 0, 0, 0, 0, 0], bool),
    np.array([0, 0, 0, 0, 1, 1, 0, 1, 0], bool),
    np.array([0, 0, 0, 0, 1, 1, 0, 0, 1], bool),
)
_HAND_CASES = [
    # tokens, mask, seg overrides, expected
    ([0, 1, 2, 0, 3, 1, 6], None, {}, [0, 0, 0, 1, 1, 2, 2]),
    ([2, 2, 0], None, {}, [0, 1, 2]),
    ([4, 2, 5, 0, 2, 0], None, {}, [0, 0, 0, 0, 0, 1]),
    ([4, 2, 5, 0, 2, 0], None, {"protect_decimals": False}, [0, 0, 1, 1, 1, 2]),
    ([7, 3, 8, 2, 0], None, {}, [0, 0, 0, 0, 1]),
    ([4, 6, 5], None, {}, [0, 0, 1]),
    ([4, 2, 5, 0], [1, 1, 0, 1], {}, [0, 0, -1, 1]),
    ([4, 2], None, {}, [0, 0]),
    ([2, 5, 0], None, {}, [0, 1, 1]),
    ([0, 0, 0, 0], [0, 1, 1, 0], {}, [-1, 0, 0, -1]),
    ([0, 0, 0, 0], [1, 0, 1, 1], {}, [0, -1, 1, 1]),
    ([0, 2, 0], [0, 0, 0], {}, [-1, -1, -1]),
    ([0, 2, 2, 0, 1, 2, 0], None, {"min_segment_len": 2}, [0, 0, 0, 1, 1, 1, 1]),
    ([2, 0, 1, 2], None, {"min_segment_len": 2}, [0, 0, 0, 0]),
    ([2, 2, 0, 1, 2], None, {"min_segment_len": 2}, [0, 0, 1, 1, 1]),
    ([2, 2, 0, 1, 2], None, {"min_segment_len": 3}, [0, 0, 0, 0, 0]),
    ([0, 1, 2, 2, 2], None, {"min_segment_len": 2}, [0, 0, 0, 0, 0]),
    ([0] * 7 + [2, 0, 0], None, {"max_segment_len": 3}, [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]),
    # min then max: raw lengths [8, 1] -> merged 9 -> split into 3 pieces of 3
    ([0] * 7 + [2, 0], None, {"min_segment_len": 2, "max_segment_len": 4},
     [0, 0, 0, 1, 1, 1, 2, 2, 2]),
    ([0, 2, 0, 0], [0, 1, 1, 1], {"granularity": "token"}, [-1, 0, 1, 2]),
    ([0, 2, 0, 0], [0, 1, 1, 1], {"granularity": "sequence"}, [-1, 0, 0, 0]),
]


@pytest.mark.parametrize("tokens,mask,over,expected", _HAND_CASES)
def test_segment_ids_hand_cases(tokens, mask, over, expected):
    tokens = np.asarray([tokens], np.int32)
    mask = np.ones_like(tokens) if mask is None else np.asarray([mask], np.int32)
    seg_cfg = dataclasses.replace(_classic("sspo").segmentation, **over)
    got = segment_ids(jnp.asarray(tokens), jnp.asarray(mask), _jtable(_HAND_TABLE), seg_cfg)
    np.testing.assert_array_equal(np.asarray(got), [expected])
    np.testing.assert_array_equal(
        ref.np_segment_ids(tokens, mask, *_HAND_TABLE, **_seg_kwargs(seg_cfg)), [expected]
    )


# ------------------------------------------------------------------------------------- advantages


def _rewards(rng, n_groups, G):
    r = rng.integers(0, 3, (n_groups, G)).astype(np.float32) / 2
    r[0] = 1.0  # an all-equal group
    if n_groups > 1:
        r[1] = rng.normal(size=G).astype(np.float32)
    return r.reshape(-1)


@pytest.mark.parametrize("G", [1, 2, 4])
@pytest.mark.parametrize("seed", range(3))
def test_group_advantages_match_reference(G, seed):
    rng = np.random.default_rng(seed)
    r = _rewards(rng, 3, G)
    a, frac = adv_mod.group_zscore(jnp.asarray(r), G)
    np.testing.assert_allclose(np.asarray(a), ref.np_group_zscore(r, G), rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(a)[:G] == 0.0)
    np.testing.assert_allclose(float(frac), ref.np_zero_var_group_fraction(r, G), atol=1e-6)
    gm = np.asarray(adv_mod.group_mean(jnp.asarray(r), G))
    np.testing.assert_allclose(gm, ref.np_group_mean(r, G), atol=1e-6)
    assert np.all(gm[:G] == 0.0)
    np.testing.assert_allclose(
        np.asarray(adv_mod.rloo(jnp.asarray(r), G)), ref.np_rloo(r, G), atol=1e-6
    )


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.8), (0.99, 0.95)])
@pytest.mark.parametrize("B,T", [(1, 1), (3, 7), (5, 16)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_gae_matches_reference(gamma, lam, B, T, contiguous):
    rng = np.random.default_rng(B * 100 + T)
    mask = _random_mask(rng, B, T, contiguous)
    R = _f32(rng.normal(size=B))
    tr = ref.np_outcome_token_rewards(R, mask)
    got_tr = np.asarray(adv_mod.outcome_token_rewards(jnp.asarray(R), jnp.asarray(mask)))
    np.testing.assert_allclose(got_tr, tr, atol=1e-7)
    tr = _f32(tr + np.where(mask == 1, rng.normal(0, 0.1, (B, T)), 0.0))  # dense rewards too
    values = _f32(rng.normal(size=(B, T)))
    exp_a, exp_r = ref.np_gae(tr, values, mask, gamma, lam)
    a, r = adv_mod.gae(jnp.asarray(tr), jnp.asarray(values), jnp.asarray(mask), gamma=gamma, lam=lam)
    m = mask == 1
    np.testing.assert_allclose(np.asarray(a)[m], exp_a[m], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(r)[m], exp_r[m], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(a)[~m], 0.0, atol=0)
    np.testing.assert_allclose(np.asarray(r)[~m], 0.0, atol=0)


def test_sequence_baseline_matches_reference():
    rng = np.random.default_rng(0)
    R = _f32(rng.integers(0, 2, 7))
    z = _f32(rng.normal(0, 3, 7))
    np.testing.assert_allclose(
        np.asarray(adv_mod.sequence_baseline(jnp.asarray(R), jnp.asarray(z))),
        ref.np_sequence_baseline(R, z),
        rtol=1e-5,
        atol=1e-6,
    )


# ------------------------------------------------------------------------------------- KL, critics


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_kl_penalty_matches_reference(est):
    rng = np.random.default_rng(1)
    lp = _f32(rng.normal(-1.5, 1.0, (3, 7)))
    rl = _f32(lp + rng.normal(0, 0.5, (3, 7)))
    got = np.asarray(kl_mod.kl_penalty(jnp.asarray(lp), jnp.asarray(rl), estimator=est))
    np.testing.assert_allclose(got, ref.np_kl(lp, rl, est), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("B,T", [(1, 1), (3, 7), (5, 16)])
@pytest.mark.parametrize("clip", [0.2, 0.5])
def test_clipped_value_loss_matches_reference(B, T, clip):
    rng = np.random.default_rng(B + T)
    mask = _random_mask(rng, B, T)
    old = _f32(rng.normal(size=(B, T)))
    vals = _f32(old + rng.normal(0, 0.6, (B, T)))
    rets = _f32(rng.normal(size=(B, T)))
    exp_loss, exp_grad = ref.np_clipped_value_loss(vals, old, rets, mask, clip)
    args = (jnp.asarray(old), jnp.asarray(rets), jnp.asarray(mask))

    def f(v):
        s, d = losses_mod.clipped_value_loss(v, *args, clip=clip)
        return s / d

    loss, grad = jax.value_and_grad(f)(jnp.asarray(vals))
    np.testing.assert_allclose(float(loss), exp_loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), exp_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n", [1, 8])
def test_bce_critic_loss_matches_reference(n):
    rng = np.random.default_rng(n)
    z = _f32(rng.normal(0, 4, n))
    R = _f32(rng.integers(0, 2, n))

    def f(x):
        s, d = losses_mod.bce_critic_loss(x, jnp.asarray(R))
        return s / d

    loss, grad = jax.value_and_grad(f)(jnp.asarray(z))
    exp_loss, exp_grad = ref.np_bce_critic_loss(z, R)
    np.testing.assert_allclose(float(loss), exp_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), exp_grad, rtol=1e-4, atol=1e-6)
