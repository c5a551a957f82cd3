"""Independent plain-Python/NumPy (float64) reference for the issue-20 parts of SSPO.

Written from the specification (the docstrings of `SegmentationConfig` and `AlgorithmConfig` and
the brief of issue 20), never from the package source: dual-level clipping (the token guard),
the ``entropy_scale_low`` knob, the ``quantile`` entropy normalisation from a fixed-bin
histogram, and the new segmentation rules, which are implemented here on the token *texts*
(character by character), not on per-id feature tables. Nothing here imports jax or sspo_jax.
"""

from __future__ import annotations

import math
import re

import numpy as np

HIST_BINS = 512  # the histogram the spec fixes: equal bins of log1p(min(H, 16)) / log1p(16)
HIST_MAX = 16.0


# ------------------------------------------------------------------------------ entropy scale


def np_hist_quantile(all_hbar, x) -> float:
    """Quantile of x among the segment entropies `all_hbar`, each bin's mass spread uniformly."""
    def pos(h):
        return math.log1p(min(max(h, 0.0), HIST_MAX)) / math.log1p(HIST_MAX) * HIST_BINS

    hist = np.zeros(HIST_BINS)
    for h in all_hbar:
        hist[min(int(math.floor(pos(h))), HIST_BINS - 1)] += 1
    p = pos(x)
    b = min(int(math.floor(p)), HIST_BINS - 1)
    q = (hist[:b].sum() + (p - b) * hist[b]) / max(len(all_hbar), 1)
    return min(max(q, 0.0), 1.0)


def np_segment_g(cfg, entropy, mask, seg, all_hbar=None) -> dict:
    """(b, k) -> (g_lo, g_hi) per segment; `all_hbar` (the global batch's segment entropies)
    defaults to this batch's."""
    mask = np.asarray(mask).astype(bool)
    H = np.asarray(entropy, np.float64)
    segs: dict = {}
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                segs.setdefault((b, int(seg[b, t])), []).append(t)
    hbar = {key: float(np.mean([H[key[0], t] for t in ts])) for key, ts in segs.items()}
    pool = list(hbar.values()) if all_hbar is None else list(all_hbar)
    mean = float(np.mean(pool)) if pool else 0.0
    std = float(np.std(pool)) if pool else 0.0
    out = {}
    for key, h in hbar.items():
        if cfg["entropy_alpha"] == 0:
            g = 1.0
        else:
            norm = cfg["entropy_norm"]
            if norm == "ratio":
                dev = h / mean - 1.0 if mean > 1e-8 else 0.0
            elif norm == "zscore":
                dev = (h - mean) / (std + 1e-6)
            elif norm == "none":
                dev = h - 1.0
            elif norm == "quantile":
                dev = 2.0 * np_hist_quantile(pool, h) - 1.0
            else:
                raise ValueError(norm)
            g = min(max(1.0 + cfg["entropy_alpha"] * dev, cfg["entropy_g_min"]), cfg["entropy_g_max"])
        out[key] = (g if cfg["entropy_scale_low"] else min(g, 1.0), g)
    return out


# ------------------------------------------------------------------------------ guarded loss


def np_guarded_loss(cfg, logp, old_logp, adv, mask, seg, entropy=None, all_hbar=None):
    """Loss, d loss / d logp and per-token guard flags of the sg-form clipped loss with the
    token guard; aggregation token-mean or seq-mean-token-mean.

    cfg keys: eps_low, eps_high, dual_clip, entropy_alpha, entropy_g_min, entropy_g_max,
    entropy_norm, entropy_scale_low, token_guard, token_guard_eps_low, token_guard_eps_high,
    log_ratio_clamp, loss_agg_mode.
    """
    logp = np.asarray(logp, np.float64)
    old = np.asarray(old_logp, np.float64)
    mask = np.asarray(mask).astype(bool)
    B, T = mask.shape
    A = np.asarray(adv, np.float64)
    A = np.broadcast_to(A[:, None], (B, T)) if A.ndim == 1 else A
    clamp = cfg["log_ratio_clamp"]
    gs = (np_segment_g(cfg, entropy, mask, seg, all_hbar) if entropy is not None else None)
    segs: dict = {}
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                segs.setdefault((b, int(seg[b, t])), []).append(t)
    n_tok = mask.sum()
    n_rows = (mask.sum(1) > 0).sum()
    loss, grad = 0.0, np.zeros((B, T))
    guard = np.zeros((B, T), bool)
    for key, ts in segs.items():
        b = key[0]
        L = float(np.mean([logp[b, t] - old[b, t] for t in ts]))
        L = min(max(L, -clamp), clamp)
        r = math.exp(L)
        g_lo, g_hi = gs[key] if gs is not None else (1.0, 1.0)
        lo, hi = cfg["eps_low"] * g_lo, cfg["eps_high"] * g_hi
        tlo = lo if cfg["token_guard_eps_low"] is None else cfg["token_guard_eps_low"]
        thi = hi if cfg["token_guard_eps_high"] is None else cfg["token_guard_eps_high"]
        for t in ts:
            a = A[b, t]
            w = 1.0 / n_tok if cfg["loss_agg_mode"] == "token-mean" else 1.0 / (len([s for s in range(T) if mask[b, s]]) * n_rows)
            clipped = (a > 0 and r > 1 + hi) or (a < 0 and r < 1 - lo)
            l_t = -(min(max(r, 1 - lo), 1 + hi) * a) if clipped else -r * a
            d_t = 0.0 if clipped else -a * r  # d loss_t / d logp_t in the sg form
            if cfg["dual_clip"] is not None and a < 0 and l_t > -cfg["dual_clip"] * a:
                l_t, d_t, clipped = -cfg["dual_clip"] * a, 0.0, True
            tok = math.exp(min(max(logp[b, t] - old[b, t], -clamp), clamp))
            if cfg["token_guard"] and not clipped and ((a > 0 and tok > 1 + thi) or (a < 0 and tok < 1 - tlo)):
                guard[b, t] = True
                d_t = 0.0
            loss += w * l_t
            grad[b, t] = w * d_t
    return loss, grad, guard


# ------------------------------------------------------------------------------ segmentation

_WORD = re.compile(r"[A-Za-z0-9_]")


def _text_is_delim(text, delims, word_boundary):
    return any(ch in delims and not (word_boundary and j + 1 < len(text) and _WORD.match(text[j + 1]))
               for j, ch in enumerate(text))


def _stems(abbreviations):
    out = set()
    for a in abbreviations:
        body = a[:-1].lower()
        out.add(body)
        for j in range(len(body) - 1):
            if body[j] == ".":
                out.add(body[j:])
    return out


def _math_open_after(texts):
    """For each token, whether inline math is open after it: scan characters, '$' runs toggle,
    a backslash followed by '(' or ')' (possibly across tokens) opens or closes, a newline token
    resets to closed."""
    out = []
    dollar, depth, prev_bs = False, 0, False
    for text in texts:
        if "\n" in text or "\r" in text:
            dollar, depth, prev_bs = False, 0, text.endswith("\\")
            out.append(False)
            continue
        j, n = 0, len(text)
        while j < n:
            ch = text[j]
            if ch == "$":
                while j < n and text[j] == "$":
                    j += 1
                dollar = not dollar
                prev_bs = False
                continue
            if prev_bs and ch in "()":
                depth += 1 if ch == "(" else -1
            prev_bs = ch == "\\"
            j += 1
        out.append(dollar or depth > 0)
    return out


def np_segment_texts(texts, special, cfg) -> list[int]:
    """Segment ids of ONE response given as token texts (all valid) and special flags.

    cfg keys: delimiters, word_boundary, eos_joins_last, protect_decimals, protect_list_markers,
    abbreviations, protect_math, min_segment_len (max_segment_len is not covered here).
    """
    n = len(texts)
    delims = set(cfg["delimiters"])
    stems = _stems(cfg["abbreviations"])
    is_delim = [not special[i] and bool(texts[i]) and _text_is_delim(texts[i], delims, cfg["word_boundary"])
                for i in range(n)]
    digit = [not special[i] and texts[i] != "" and all(c in "0123456789" for c in texts[i]) for i in range(n)]
    math_after = _math_open_after([("" if special[i] else texts[i]) for i in range(n)])
    for i in range(n):
        if not is_delim[i]:
            continue
        txt = texts[i]
        if cfg["protect_decimals"] and txt in (".", ",") and 0 < i < n - 1 \
                and not special[i - 1] and not special[i + 1] \
                and texts[i - 1][-1:].isdigit() and texts[i + 1][:1].isdigit() \
                and texts[i - 1][-1] in "0123456789" and texts[i + 1][0] in "0123456789":
            is_delim[i] = False
            continue
        if cfg["protect_list_markers"] and txt in (".", ")") and i > 0 and digit[i - 1] and i + 1 < n \
                and not special[i + 1] and texts[i + 1][:1] in (" ", "\t"):
            j = i - 1
            while j >= 0 and not special[j] and (digit[j] or (texts[j] and set(texts[j]) <= {" ", "\t"})):
                j -= 1
            if j < 0 or (not special[j] and texts[j].rstrip(" \t").endswith(("\n", "\r"))):
                is_delim[i] = False
                continue
        if stems and txt == "." and i > 0 and not special[i - 1] and texts[i - 1].lstrip(" \t([{").lower() in stems:
            is_delim[i] = False
            continue
        if cfg["protect_math"] and i > 0 and math_after[i] and math_after[i - 1]:
            is_delim[i] = False
    segs: list[list[int]] = []
    for i in range(n):
        opens = i == 0 or (is_delim[i - 1] and not (cfg["eos_joins_last"] and special[i]))
        if opens:
            segs.append([])
        segs[-1].append(i)
    m = cfg["min_segment_len"]
    if m > 1 and segs:
        merged = []
        for k, s in enumerate(segs):
            if k > 0 and len(s) < m:
                merged[-1] = merged[-1] + s
            else:
                merged.append(list(s))
        if len(merged[0]) < m and len(merged) > 1:
            merged = [merged[0] + merged[1]] + merged[2:]
        segs = merged
    ids = [0] * n
    for k, s in enumerate(segs):
        for i in s:
            ids[i] = k
    return ids
