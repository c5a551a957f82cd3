"""Independent plain-NumPy (float64) references for SSPO's neighbours: GMPO, CISPO, Clip-Cov,
KL-Cov and the 80/20 high-entropy mask, written from the papers (and, in the ``verl_*``
functions, from verl's definitions), never from the package source. Explicit loops; every
function returns ``(loss, d loss / d logp)`` with the gradient derived by hand.

Conventions as in ``numpy_reference.py``: ``[B, T]`` arrays, ``mask`` 1 on trained tokens,
advantages ``[B]`` or ``[B, T]``. Nothing here imports jax or sspo_jax.
"""

from __future__ import annotations

import math

import numpy as np


def _adv(adv, shape):
    adv = np.asarray(adv, np.float64)
    return np.broadcast_to(adv[:, None], shape).copy() if adv.ndim == 1 else adv.copy()


def agg_weights(mask, mode, norm_constant=None) -> np.ndarray:
    """w[b, t] with loss = sum_{b,t} w * l over valid tokens (ALGORITHMS.md 6)."""
    m = np.asarray(mask).astype(bool)
    B, T = m.shape
    n_b = m.sum(1)
    rows = int((n_b > 0).sum())
    n_tok = int(m.sum())
    C = T if norm_constant is None else norm_constant
    w = np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            if not m[b, t]:
                continue
            w[b, t] = {"token-mean": 1.0 / n_tok, "seq-mean-token-mean": 1.0 / (n_b[b] * rows),
                       "seq-mean-token-sum": 1.0 / rows, "seq-mean-token-sum-norm": 1.0 / (C * rows)}[mode]
    return w


# ------------------------------------------------------------------ GMPO (arXiv 2507.20673)

def np_gmpo(logp, old, adv, mask, lo, hi, mode="seq-mean-token-mean", clamp=20.0):
    """One unit per response: c_t = min(D, hi) if A>0, max(D, -lo) if A<0, 0 if A=0;
    L = clip(mean c, +-clamp); per token -A_t exp(L); the gradient flows through the mean."""
    logp, old = np.asarray(logp, np.float64), np.asarray(old, np.float64)
    m = np.asarray(mask).astype(bool)
    A = _adv(adv, logp.shape)
    w = agg_weights(m, mode)
    loss, grad = 0.0, np.zeros_like(logp)
    for b in range(logp.shape[0]):
        ts = [t for t in range(logp.shape[1]) if m[b, t]]
        if not ts:
            continue
        c, dc = [], []
        for t in ts:
            d = logp[b, t] - old[b, t]
            if A[b, t] > 0:
                c.append(min(d, hi)), dc.append(0.0 if d > hi else 1.0)
            elif A[b, t] < 0:
                c.append(max(d, -lo)), dc.append(0.0 if d < -lo else 1.0)
            else:
                c.append(0.0), dc.append(0.0)
        L = sum(c) / len(ts)
        inside = abs(L) < clamp
        L = min(max(L, -clamp), clamp)
        r = math.exp(L)
        dloss_dL = sum(w[b, t] * -A[b, t] * r for t in ts)
        loss += sum(w[b, t] * -A[b, t] * r for t in ts)
        if inside:
            for t, g in zip(ts, dc):
                grad[b, t] = dloss_dL * g / len(ts)
    return loss, grad


def verl_geo_mean(logp, old, adv, mask, lo, hi):
    """verl ``compute_policy_loss_geo_mean``: sign-aware clamp, exp of the masked mean with
    ``+1e-8``, sequence advantage = masked mean of A, loss = mean over all B rows of -A * ratio."""
    logp, old = np.asarray(logp, np.float64), np.asarray(old, np.float64)
    m = np.asarray(mask).astype(np.float64)
    A = _adv(adv, logp.shape)
    d = logp - old
    s = np.sign(A)
    c = s * np.minimum(s * d, s * np.clip(d, -lo, hi))
    n = m.sum(-1)
    ratio = np.exp((c * m).sum(-1) / (n + 1e-8))
    a_seq = (A * m).sum(-1) / (n + 1e-8)
    return float(np.mean(-a_seq * ratio))


# ------------------------------------------------------------------ CISPO (arXiv 2506.13585)

def np_cispo(logp, old, adv, mask, eps_low, eps_high, mode="token-mean", clamp=20.0):
    """Per token -w_t A_t logp_t, w_t = clip(exp(clip(D, +-clamp)), 1-eps_low, 1+eps_high) held
    constant; gradient -w_t A_t (times the aggregation weight)."""
    logp, old = np.asarray(logp, np.float64), np.asarray(old, np.float64)
    m = np.asarray(mask).astype(bool)
    A = _adv(adv, logp.shape)
    wt = agg_weights(m, mode)
    loss, grad = 0.0, np.zeros_like(logp)
    for b, t in zip(*np.nonzero(m)):
        d = min(max(logp[b, t] - old[b, t], -clamp), clamp)
        iw = min(max(math.exp(d), 1.0 - eps_low), 1.0 + eps_high)
        loss += wt[b, t] * -iw * A[b, t] * logp[b, t]
        grad[b, t] = wt[b, t] * -iw * A[b, t]
    return loss, grad


# ------------------------------------------------------------------ covariance (arXiv 2505.22617)

def np_covariance(adv, logp, mask) -> np.ndarray:
    """cov_t = (A_t - mean A)(logp_t - mean logp), means over the valid tokens; 0 elsewhere."""
    logp = np.asarray(logp, np.float64)
    m = np.asarray(mask).astype(bool)
    A = _adv(adv, logp.shape)
    if not m.any():
        return np.zeros_like(logp)
    ma, ml = A[m].mean(), logp[m].mean()
    return np.where(m, (A - ma) * (logp - ml), 0.0)


def np_ppo_token(d, a, lo, hi):
    """Token PPO loss and d loss / d D, and whether the clipped branch is strictly selected."""
    r = math.exp(d)
    rc = min(max(r, 1.0 - lo), 1.0 + hi)
    if rc * a < r * a:
        return -rc * a, 0.0, True
    return -r * a, -a * r, False


def np_clip_cov_candidates(logp, old, adv, mask, lo, hi, cov_lo, cov_hi) -> np.ndarray:
    """Valid tokens whose PPO clip is inactive and cov_lo < cov < cov_hi."""
    logp, old = np.asarray(logp, np.float64), np.asarray(old, np.float64)
    m = np.asarray(mask).astype(bool)
    A = _adv(adv, logp.shape)
    cov = np_covariance(A, logp, m)
    out = np.zeros(m.shape, bool)
    for b, t in zip(*np.nonzero(m)):
        clipped = np_ppo_token(min(max(logp[b, t] - old[b, t], -20.0), 20.0), A[b, t], lo, hi)[2]
        out[b, t] = (not clipped) and cov_lo < cov[b, t] < cov_hi
    return out


def np_clip_cov_budget(mask, frac) -> int:
    return max(int(math.floor(frac * int(np.asarray(mask).astype(bool).sum()))), 1)


def np_clip_cov(logp, old, adv, mask, lo, hi, detached, mode="token-mean", clamp=20.0):
    """Token PPO clip with the loss of the `detached` tokens set to 0."""
    logp, old = np.asarray(logp, np.float64), np.asarray(old, np.float64)
    m = np.asarray(mask).astype(bool)
    A = _adv(adv, logp.shape)
    w = agg_weights(m, mode)
    loss, grad = 0.0, np.zeros_like(logp)
    for b, t in zip(*np.nonzero(m)):
        if detached[b, t]:
            continue
        raw = logp[b, t] - old[b, t]
        l, dl, _ = np_ppo_token(min(max(raw, -clamp), clamp), A[b, t], lo, hi)
        loss += w[b, t] * l
        grad[b, t] = w[b, t] * dl if abs(raw) < clamp else 0.0
    return loss, grad


def verl_clip_cov(logp, old, adv, mask, lo, hi, chosen):
    """verl ``compute_policy_loss_clip_cov`` value, token-mean, with its random permutation
    replaced by the given `chosen` tokens: max(pg1, pg2) * corr."""
    logp, old = np.asarray(logp, np.float64), np.asarray(old, np.float64)
    m = np.asarray(mask).astype(np.float64)
    A = _adv(adv, logp.shape)
    ratio = np.exp(logp - old)
    pg1, pg2 = -A * ratio, -A * np.clip(ratio, 1 - lo, 1 + hi)
    corr = np.where(chosen, 0.0, 1.0)
    return float(((np.maximum(pg1, pg2) * corr) * m).sum() / m.sum())


def np_kl_cov_selected(adv, logp, mask, frac) -> np.ndarray:
    """The max(floor(frac * N), 1) valid tokens of largest covariance (ties: first position)."""
    m = np.asarray(mask).astype(bool)
    cov = np_covariance(adv, logp, m)
    idx = [(b, t) for b, t in zip(*np.nonzero(m))]
    out = np.zeros(m.shape, bool)
    if not idx:
        return out
    k = np_clip_cov_budget(m, frac)
    for b, t in sorted(idx, key=lambda bt: -cov[bt])[:k]:
        out[b, t] = True
    return out


def np_kl_cov(logp, old, adv, mask, frac, coef, mode="token-mean", clamp=20.0):
    """Per token -A_t exp(D_t) + [selected] coef |D_t|, no clip."""
    logp, old = np.asarray(logp, np.float64), np.asarray(old, np.float64)
    m = np.asarray(mask).astype(bool)
    A = _adv(adv, logp.shape)
    sel = np_kl_cov_selected(A, logp, m, frac)
    w = agg_weights(m, mode)
    loss, grad = 0.0, np.zeros_like(logp)
    for b, t in zip(*np.nonzero(m)):
        raw = logp[b, t] - old[b, t]
        d = min(max(raw, -clamp), clamp)
        l, dl = -A[b, t] * math.exp(d), -A[b, t] * math.exp(d)
        if sel[b, t]:
            l += coef * abs(d)
            dl += coef * float(np.sign(d))
        loss += w[b, t] * l
        grad[b, t] = w[b, t] * dl if abs(raw) < clamp else 0.0
    return loss, grad


def verl_kl_cov(logp, old, adv, mask, frac, coef):
    """verl ``compute_policy_loss_kl_cov`` value, token-mean (top-k by covariance, stable ties)."""
    logp, old = np.asarray(logp, np.float64), np.asarray(old, np.float64)
    m = np.asarray(mask).astype(bool)
    A = _adv(adv, logp.shape)
    d = logp - old
    pg = -A * np.exp(d)
    flat = np.flatnonzero(m.ravel())
    a_v, l_v = A.ravel()[flat], logp.ravel()[flat]
    cov = (a_v - a_v.mean()) * (l_v - l_v.mean())
    k = max(1, int(len(cov) * frac))
    top = flat[np.argsort(-cov, kind="stable")[:k]]
    pg_flat = pg.ravel().copy()
    pg_flat[top] = pg_flat[top] + coef * np.abs(d.ravel()[top])
    return float((pg_flat.reshape(m.shape) * m).sum() / m.sum())


# ------------------------------------------------------------------ 80/20 (arXiv 2506.01939)

def np_entropy_threshold(entropy, mask, percentile) -> float:
    """The percentile (linear interpolation) of the valid tokens' entropies; +inf if none."""
    m = np.asarray(mask).astype(bool)
    if not m.any():
        return math.inf
    return float(np.percentile(np.asarray(entropy, np.float64)[m], percentile))


def np_top_entropy(logp, old, adv, mask, entropy, lo, hi, percentile, mode="token-mean", threshold=None,
                   clamp=20.0):
    """Token PPO clip (lo, hi), with the term of tokens below the entropy threshold set to 0;
    the aggregation denominator keeps every valid token."""
    logp, old = np.asarray(logp, np.float64), np.asarray(old, np.float64)
    m = np.asarray(mask).astype(bool)
    A = _adv(adv, logp.shape)
    tau = np_entropy_threshold(entropy, m, percentile) if threshold is None else threshold
    w = agg_weights(m, mode)
    loss, grad = 0.0, np.zeros_like(logp)
    for b, t in zip(*np.nonzero(m)):
        if entropy[b, t] < tau:
            continue
        raw = logp[b, t] - old[b, t]
        l, dl, _ = np_ppo_token(min(max(raw, -clamp), clamp), A[b, t], lo, hi)
        loss += w[b, t] * l
        grad[b, t] = w[b, t] * dl if abs(raw) < clamp else 0.0
    return loss, grad


def fd_grad(fn, x, h=1e-6) -> np.ndarray:
    """Central finite differences of a scalar NumPy function, float64."""
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (fn(x + e) - fn(x - e)) / (2 * h)
    return g
