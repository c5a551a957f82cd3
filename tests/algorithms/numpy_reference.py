"""Independent plain-NumPy (float64) reference for the loss math of sspo_jax.

Written only from ``ALGORITHMS.md`` (and the precise project choices restated in the test brief),
never from the package source, so that the comparison tests in ``test_numpy_reference.py`` are a
genuine second implementation.  Clarity over speed: explicit Python loops over rows, tokens and
segments.  Nothing here imports jax or sspo_jax.

Conventions: arrays are batch-major ``[B, T]``; ``mask`` is 1 on response tokens that are trained
on; segment ids are local to each row, start at 0 and are -1 where ``mask == 0``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "cfg_to_dict",
    "np_segment_ids",
    "np_token_segment_ids",
    "np_sequence_segment_ids",
    "np_policy_loss",
    "np_policy_terms",
    "np_clip_fractions",
    "np_group_zscore",
    "np_zero_var_group_fraction",
    "np_group_mean",
    "np_rloo",
    "np_gae",
    "np_outcome_token_rewards",
    "np_sequence_baseline",
    "np_kl",
    "np_kl_grad",
    "np_clipped_value_loss",
    "np_bce_critic_loss",
    "np_dapo_overlong_penalty",
]

ZSCORE_EPS = 1e-6

# --------------------------------------------------------------------------------------------
# Segmentation (ALGORITHMS.md 1a)
# --------------------------------------------------------------------------------------------


def np_token_segment_ids(mask) -> np.ndarray:
    """granularity="token": each valid token is its own segment, ids 0, 1, 2, ... per row."""
    mask = np.asarray(mask).astype(bool)
    out = np.full(mask.shape, -1, dtype=np.int64)
    for b in range(mask.shape[0]):
        k = 0
        for t in range(mask.shape[1]):
            if mask[b, t]:
                out[b, t] = k
                k += 1
    return out


def np_sequence_segment_ids(mask) -> np.ndarray:
    """granularity="sequence": all valid tokens of a row form segment 0."""
    mask = np.asarray(mask).astype(bool)
    return np.where(mask, 0, -1).astype(np.int64)


def _raw_row_segments(tok, valid, is_delim, is_decimal_sep, ends_digit, starts_digit, protect):
    """List of segments (each a list of token positions) for one row, before min/max."""
    T = len(tok)
    segments: list[list[int]] = []
    prev_closed = True  # the first valid token opens a segment
    for t in range(T):
        if not valid[t]:
            prev_closed = True  # a valid token following an invalid one opens a new segment
            continue
        if prev_closed:
            segments.append([])
        segments[-1].append(t)
        boundary = bool(is_delim[tok[t]])
        if boundary and protect and bool(is_decimal_sep[tok[t]]):
            if (
                t - 1 >= 0
                and t + 1 < T
                and valid[t - 1]
                and valid[t + 1]
                and bool(ends_digit[tok[t - 1]])
                and bool(starts_digit[tok[t + 1]])
            ):
                boundary = False
        prev_closed = boundary
    return segments


def _apply_min_len(segments: list[list[int]], min_len: int) -> list[list[int]]:
    if min_len is None or min_len <= 1 or len(segments) == 0:
        return segments
    # One pass over the ORIGINAL segments: every k > 0 shorter than min merges into the previous.
    merged: list[list[int]] = []
    for k, seg in enumerate(segments):
        if k > 0 and len(seg) < min_len:
            merged[-1] = merged[-1] + seg
        else:
            merged.append(list(seg))
    # Then: a still-short segment 0 absorbs the next segment (if any).
    if len(merged[0]) < min_len and len(merged) > 1:
        merged = [merged[0] + merged[1]] + merged[2:]
    return merged


def _apply_max_len(segments: list[list[int]], max_len) -> list[list[int]]:
    if max_len is None:
        return segments
    out: list[list[int]] = []
    for seg in segments:
        n = len(seg)
        if n <= max_len:
            out.append(seg)
            continue
        p = -(-n // max_len)  # ceil(n / max)
        pieces: list[list[int]] = [[] for _ in range(p)]
        for j, t in enumerate(seg):
            pieces[(j * p) // n].append(t)
        out.extend(pieces)
    return out


def np_segment_ids(
    tokens,
    mask,
    is_delim,
    is_decimal_sep,
    ends_with_digit,
    starts_with_digit,
    *,
    granularity: str = "subsentence",
    protect_decimals: bool = True,
    min_segment_len: int = 1,
    max_segment_len=None,
) -> np.ndarray:
    """Segment ids [B, T] (local to each row, from 0), -1 where mask == 0."""
    tokens = np.asarray(tokens)
    mask = np.asarray(mask).astype(bool)
    if granularity == "token":
        return np_token_segment_ids(mask)
    if granularity == "sequence":
        return np_sequence_segment_ids(mask)
    if granularity != "subsentence":
        raise ValueError(f"unknown granularity {granularity!r}")
    is_delim = np.asarray(is_delim).astype(bool)
    is_decimal_sep = np.asarray(is_decimal_sep).astype(bool)
    ends_with_digit = np.asarray(ends_with_digit).astype(bool)
    starts_with_digit = np.asarray(starts_with_digit).astype(bool)
    B, T = tokens.shape
    out = np.full((B, T), -1, dtype=np.int64)
    for b in range(B):
        segs = _raw_row_segments(
            tokens[b],
            mask[b],
            is_delim,
            is_decimal_sep,
            ends_with_digit,
            starts_with_digit,
            protect_decimals,
        )
        segs = _apply_min_len(segs, min_segment_len)
        segs = _apply_max_len(segs, max_segment_len)
        for k, seg in enumerate(segs):
            for t in seg:
                out[b, t] = k
    return out


# --------------------------------------------------------------------------------------------
# KL estimators (d = ref_logp - logp)
# --------------------------------------------------------------------------------------------


def np_kl(logp, ref_logp, estimator: str = "k3") -> np.ndarray:
    d = np.asarray(ref_logp, np.float64) - np.asarray(logp, np.float64)
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return np.exp(d) - d - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}")


def np_kl_grad(logp, ref_logp, estimator: str = "k3") -> np.ndarray:
    """Elementwise d KL / d logp."""
    d = np.asarray(ref_logp, np.float64) - np.asarray(logp, np.float64)
    if estimator == "k1":
        return np.ones_like(d)
    if estimator == "k2":
        return -d
    if estimator == "k3":
        return 1.0 - np.exp(d)
    raise ValueError(f"unknown KL estimator {estimator!r}")


# --------------------------------------------------------------------------------------------
# Policy loss (ALGORITHMS.md 1b-1d, 2, 3, 4, 6, 7, 8)
# --------------------------------------------------------------------------------------------

_CFG_DEFAULTS: dict[str, Any] = dict(
    eps_low=0.2,
    eps_high=0.2,
    dual_clip=None,
    granularity="token",
    ratio_form="sg",
    log_ratio_clamp=None,
    entropy_alpha=0.0,
    entropy_g_min=0.5,
    entropy_g_max=2.0,
    entropy_norm="ratio",
    loss_agg_mode="token-mean",
    loss_norm_constant=None,
    kl_beta=0.0,
    kl_estimator="k3",
)


def cfg_to_dict(cfg) -> dict[str, Any]:
    """Read the fields this reference needs from any object with those attributes
    (e.g. the package's AlgorithmConfig); ``granularity`` comes from ``cfg.segmentation``."""
    d = {}
    for k in _CFG_DEFAULTS:
        if k == "granularity":
            d[k] = cfg.segmentation.granularity
        else:
            d[k] = getattr(cfg, k)
    return d


def _full_cfg(cfg_dict) -> dict[str, Any]:
    c = dict(_CFG_DEFAULTS)
    unknown = set(cfg_dict) - set(c)
    if unknown:
        raise KeyError(f"unknown cfg keys {sorted(unknown)}")
    c.update(cfg_dict)
    return c


def _resolve_seg_ids(cfg, mask, seg_ids):
    gran = cfg["granularity"]
    if gran == "token":
        return np_token_segment_ids(mask)
    if gran == "sequence":
        return np_sequence_segment_ids(mask)
    if seg_ids is None:
        raise ValueError("granularity='subsentence' needs seg_ids")
    return np.where(np.asarray(mask).astype(bool), np.asarray(seg_ids), -1).astype(np.int64)


def np_policy_terms(
    cfg_dict, logp, old_logp, adv, mask, seg_ids=None, entropy=None, ref_logp=None
) -> dict[str, Any]:
    """All intermediate per-token quantities of the policy loss, plus loss and gradient.

    Returned keys: loss, grad, rho, A, e_lo, e_hi, g (per token, [B, T]; 0 on padding),
    clipped_low, clipped_high (bool [B, T]), weight ([B, T] aggregation weights),
    per_token_loss ([B, T]), seg_ids.
    """
    cfg = _full_cfg(cfg_dict)
    logp = np.asarray(logp, np.float64)
    old_logp = np.asarray(old_logp, np.float64)
    maskb = np.asarray(mask).astype(bool)
    B, T = logp.shape
    adv = np.asarray(adv, np.float64)
    A = np.broadcast_to(adv[:, None], (B, T)).copy() if adv.ndim == 1 else adv.copy()
    seg = _resolve_seg_ids(cfg, maskb, seg_ids)

    # ---- segments: (b, k) -> list of token positions (valid tokens only)
    segments: dict[tuple[int, int], list[int]] = {}
    for b in range(B):
        for t in range(T):
            if maskb[b, t]:
                segments.setdefault((b, int(seg[b, t])), []).append(t)

    # ---- segment log-ratio L (mean of token log-ratios), clamp
    clamp = cfg["log_ratio_clamp"]
    L_seg: dict[tuple[int, int], float] = {}
    clamped_seg: dict[tuple[int, int], bool] = {}
    for key, ts in segments.items():
        b = key[0]
        L = sum(logp[b, t] - old_logp[b, t] for t in ts) / len(ts)
        is_clamped = False
        if clamp is not None:
            if L > clamp:
                L, is_clamped = float(clamp), True
            elif L < -clamp:
                L, is_clamped = -float(clamp), True
        L_seg[key] = L
        clamped_seg[key] = is_clamped

    # ---- entropy-adaptive bounds (no gradient)
    g_seg: dict[tuple[int, int], float] = {key: 1.0 for key in segments}
    alpha = cfg["entropy_alpha"]
    if entropy is not None and len(segments) > 0:
        H = np.asarray(entropy, np.float64)
        Hbar = {key: sum(H[key[0], t] for t in ts) / len(ts) for key, ts in segments.items()}
        vals = np.array(list(Hbar.values()), np.float64)
        mean = float(vals.mean())
        norm = cfg["entropy_norm"]
        for key in segments:
            if norm == "ratio":
                x = (Hbar[key] / mean if mean != 0 else 1.0) - 1.0
            elif norm == "zscore":
                std = float(np.sqrt(np.mean((vals - mean) ** 2)))  # population std over segments
                x = (Hbar[key] - mean) / (std + ZSCORE_EPS)
            elif norm == "none":
                x = Hbar[key] - 1.0
            else:
                raise ValueError(f"unknown entropy_norm {norm!r}")
            g = 1.0 + alpha * x
            g_seg[key] = min(max(g, cfg["entropy_g_min"]), cfg["entropy_g_max"])
    elif entropy is None:
        # Without entropy the bounds are the base epsilons (g = 1, clipped to [g_min, g_max]).
        for key in segments:
            g_seg[key] = min(max(1.0, cfg["entropy_g_min"]), cfg["entropy_g_max"])

    # ---- aggregation weights: loss = sum_{b,t} weight[b,t] * l[b,t]
    n_b = maskb.sum(axis=1)
    counted = n_b > 0
    n_rows = int(counted.sum())
    n_tok = int(maskb.sum())
    mode = cfg["loss_agg_mode"]
    C = cfg["loss_norm_constant"] if cfg["loss_norm_constant"] is not None else T
    weight = np.zeros((B, T), np.float64)
    for b in range(B):
        for t in range(T):
            if not maskb[b, t]:
                continue
            if mode == "token-mean":
                weight[b, t] = 1.0 / n_tok
            elif mode == "seq-mean-token-mean":
                weight[b, t] = 1.0 / (n_b[b] * n_rows)
            elif mode == "seq-mean-token-sum":
                weight[b, t] = 1.0 / n_rows
            elif mode == "seq-mean-token-sum-norm":
                weight[b, t] = 1.0 / (C * n_rows)
            else:
                raise ValueError(f"unknown loss_agg_mode {mode!r}")

    # ---- per-token surrogate and d l / d rho
    e_lo0, e_hi0, c_dual = cfg["eps_low"], cfg["eps_high"], cfg["dual_clip"]
    rho = np.zeros((B, T))
    g_tok = np.zeros((B, T))
    e_lo = np.zeros((B, T))
    e_hi = np.zeros((B, T))
    per_tok = np.zeros((B, T))
    dl_drho = np.zeros((B, T))
    clipped_low = np.zeros((B, T), bool)
    clipped_high = np.zeros((B, T), bool)
    for (b, k), ts in segments.items():
        r = math.exp(L_seg[(b, k)])
        g = g_seg[(b, k)]
        lo, hi = e_lo0 * g, e_hi0 * g
        for t in ts:
            a = A[b, t]
            rho[b, t], g_tok[b, t], e_lo[b, t], e_hi[b, t] = r, g, lo, hi
            r_clip = min(max(r, 1.0 - lo), 1.0 + hi)
            unclipped, clipped = r * a, r_clip * a
            if clipped < unclipped:  # clipped branch strictly selected
                f, df = clipped, 0.0
            else:
                # unclipped branch (or both equal: then r is inside the bounds or A == 0,
                # and the derivative is A either way)
                f, df = unclipped, a
            loss_t, dloss_t = -f, -df
            if c_dual is not None and a < 0 and -c_dual * a < loss_t:
                loss_t, dloss_t = -c_dual * a, 0.0
            per_tok[b, t] = loss_t
            dl_drho[b, t] = dloss_t
            clipped_high[b, t] = a > 0 and r > 1.0 + hi
            clipped_low[b, t] = a < 0 and r < 1.0 - lo

    # ---- gradient wrt logp through rho
    grad = np.zeros((B, T))
    form = cfg["ratio_form"]
    for (b, k), ts in segments.items():
        if form == "sg":
            # rho_t = exp(sg[L] + logp_t - sg[logp_t]): d rho_t / d logp_s = rho_t * [s == t];
            # a segment at the clamp passes no gradient (verl's clamp acts on the ratio's value).
            if clamped_seg[(b, k)]:
                continue
            for t in ts:
                grad[b, t] += weight[b, t] * dl_drho[b, t] * rho[b, t]
        elif form == "broadcast":
            # rho_t = exp(clamp(L_k)), L_k = mean over the segment: d rho_t/d logp_s = rho_t/n_k
            if clamped_seg[(b, k)]:
                continue
            total = sum(weight[b, t] * dl_drho[b, t] * rho[b, t] for t in ts)
            for s in ts:
                grad[b, s] += total / len(ts)
        else:
            raise ValueError(f"unknown ratio_form {form!r}")

    # ---- KL term
    beta = cfg["kl_beta"]
    if beta and beta != 0.0:
        if ref_logp is None:
            raise ValueError("kl_beta > 0 needs ref_logp")
        # padded positions may hold garbage: evaluate the KL on valid tokens only
        lp_v = np.where(maskb, logp, 0.0)
        ref_v = np.where(maskb, np.asarray(ref_logp, np.float64), 0.0)
        kl = np_kl(lp_v, ref_v, cfg["kl_estimator"])
        dkl = np_kl_grad(lp_v, ref_v, cfg["kl_estimator"])
        per_tok = per_tok + np.where(maskb, beta * kl, 0.0)
        grad = grad + np.where(maskb, weight * beta * dkl, 0.0)

    loss = float(np.sum(np.where(maskb, weight * per_tok, 0.0))) if n_tok > 0 else 0.0
    return dict(
        loss=loss,
        grad=grad,
        rho=rho,
        A=A,
        g=g_tok,
        e_lo=e_lo,
        e_hi=e_hi,
        clipped_low=clipped_low,
        clipped_high=clipped_high,
        weight=weight,
        per_token_loss=np.where(maskb, per_tok, 0.0),
        seg_ids=seg,
    )


def np_policy_loss(
    cfg_dict, logp, old_logp, adv, mask, seg_ids=None, entropy=None, ref_logp=None
) -> tuple[float, np.ndarray]:
    """(loss, d loss / d logp) with loss = loss_sum / denominator of the configured mode."""
    out = np_policy_terms(cfg_dict, logp, old_logp, adv, mask, seg_ids, entropy, ref_logp)
    return out["loss"], out["grad"]


def np_clip_fractions(
    cfg_dict, logp, old_logp, adv, mask, seg_ids=None, entropy=None
) -> tuple[float, float]:
    """Token-level (low, high) clip fractions over the valid tokens of the batch (0 if none)."""
    out = np_policy_terms(cfg_dict, logp, old_logp, adv, mask, seg_ids, entropy, None)
    n = int(np.asarray(mask).astype(bool).sum())
    if n == 0:
        return 0.0, 0.0
    return float(out["clipped_low"].sum()) / n, float(out["clipped_high"].sum()) / n


# --------------------------------------------------------------------------------------------
# Advantages (ALGORITHMS.md 5)
# --------------------------------------------------------------------------------------------


def _groups(rewards, G):
    r = np.asarray(rewards, np.float64)
    if r.shape[0] % G != 0:
        raise ValueError("number of rewards must be a multiple of the group size")
    return r.reshape(-1, G)


def np_group_zscore(rewards, G, eps=1e-6) -> np.ndarray:
    """(R - mean_G) / (std_G + eps), unbiased std; all-equal groups and G == 1 give exactly 0."""
    groups = _groups(rewards, G)
    out = np.zeros_like(groups)
    for i, grp in enumerate(groups):
        if G == 1 or np.all(grp == grp[0]):
            continue
        mean = grp.sum() / G
        std = math.sqrt(((grp - mean) ** 2).sum() / (G - 1))
        out[i] = (grp - mean) / (std + eps)
    return out.reshape(-1)


def np_zero_var_group_fraction(rewards, G) -> float:
    groups = _groups(rewards, G)
    return float(np.mean([np.all(grp == grp[0]) for grp in groups]))


def np_group_mean(rewards, G) -> np.ndarray:
    """R - mean_G R; all-equal groups give exactly 0."""
    groups = _groups(rewards, G)
    out = np.zeros_like(groups)
    for i, grp in enumerate(groups):
        if np.all(grp == grp[0]):
            continue
        out[i] = grp - grp.sum() / G
    return out.reshape(-1)


def np_rloo(rewards, G) -> np.ndarray:
    """R_i - mean of the other G - 1 rewards of its group; G == 1 gives 0."""
    groups = _groups(rewards, G)
    out = np.zeros_like(groups)
    if G == 1:
        return out.reshape(-1)
    for i, grp in enumerate(groups):
        for j in range(G):
            others = [grp[m] for m in range(G) if m != j]
            out[i, j] = grp[j] - sum(others) / (G - 1)
    return out.reshape(-1)


def np_gae(token_rewards, values, mask, gamma, lam) -> tuple[np.ndarray, np.ndarray]:
    """GAE over valid tokens only (masked positions are skipped); no whitening.

    next value = value at the next valid token of the row (0 after the last).
    Returns (advantages, returns) with returns = A + V; both 0 on masked positions."""
    r = np.asarray(token_rewards, np.float64)
    v = np.asarray(values, np.float64)
    m = np.asarray(mask).astype(bool)
    B, T = r.shape
    adv = np.zeros((B, T))
    ret = np.zeros((B, T))
    for b in range(B):
        idx = [t for t in range(T) if m[b, t]]
        next_v, next_adv = 0.0, 0.0
        for t in reversed(idx):
            delta = r[b, t] + gamma * next_v - v[b, t]
            a = delta + gamma * lam * next_adv
            adv[b, t] = a
            ret[b, t] = a + v[b, t]
            next_v, next_adv = v[b, t], a
    return adv, ret


def np_outcome_token_rewards(rewards, mask) -> np.ndarray:
    """Reward R_b placed on the last valid token of row b (rows without valid tokens: all 0)."""
    r = np.asarray(rewards, np.float64)
    m = np.asarray(mask).astype(bool)
    out = np.zeros(m.shape)
    for b in range(m.shape[0]):
        idx = np.nonzero(m[b])[0]
        if len(idx):
            out[b, idx[-1]] = r[b]
    return out


def _sigmoid(z):
    z = np.asarray(z, np.float64)
    return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))


def np_sequence_baseline(rewards, critic_logit) -> np.ndarray:
    """SPPO advantage A = R - sigmoid(z)."""
    return np.asarray(rewards, np.float64) - _sigmoid(critic_logit)


# --------------------------------------------------------------------------------------------
# Value / critic losses (ALGORITHMS.md 7, 8)
# --------------------------------------------------------------------------------------------


def np_clipped_value_loss(values, old_values, returns, mask, clip) -> tuple[float, np.ndarray]:
    """Token-mean of 0.5*max((V-G)^2, (clip(V, V_old-c, V_old+c)-G)^2) and d/dV."""
    V = np.asarray(values, np.float64)
    Vo = np.asarray(old_values, np.float64)
    G = np.asarray(returns, np.float64)
    m = np.asarray(mask).astype(bool)
    n = int(m.sum())
    loss = 0.0
    grad = np.zeros(V.shape)
    if n == 0:
        return 0.0, grad
    for idx in zip(*np.nonzero(m)):
        v, vo, g = V[idx], Vo[idx], G[idx]
        vc = min(max(v, vo - clip), vo + clip)
        a, c = (v - g) ** 2, (vc - g) ** 2
        inside = vo - clip <= v <= vo + clip
        if a >= c:
            loss += 0.5 * a
            grad[idx] = (v - g) / n
        else:
            loss += 0.5 * c
            grad[idx] = ((vc - g) if inside else 0.0) / n
    return loss / n, grad


def np_bce_critic_loss(logit, rewards) -> tuple[float, np.ndarray]:
    """Mean binary cross-entropy with logits, and d/dz = (sigmoid(z) - R) / N."""
    z = np.asarray(logit, np.float64)
    R = np.asarray(rewards, np.float64)
    n = z.size
    # softplus(z) - R z, computed stably
    sp = np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))
    loss = float(np.sum(sp - R * z)) / n
    grad = (_sigmoid(z) - R) / n
    return loss, grad


# --------------------------------------------------------------------------------------------
# DAPO overlong shaping (ALGORITHMS.md 4)
# --------------------------------------------------------------------------------------------


def np_dapo_overlong_penalty(lengths, max_len, cache) -> np.ndarray:
    """0 if |y| <= Lmax - Lcache; ((Lmax - Lcache) - |y|) / Lcache up to Lmax; -1 beyond."""
    lengths = np.asarray(lengths)
    out = np.zeros(lengths.shape, np.float64)
    soft = max_len - cache
    for i, n in np.ndenumerate(lengths):
        if n <= soft:
            out[i] = 0.0
        elif n <= max_len:
            out[i] = (soft - n) / cache
        else:
            out[i] = -1.0
    return out
