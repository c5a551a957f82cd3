"""Building blocks of the decoder layers: RMSNorm and grouped-query attention (full and one-step).

Statistics, scores and softmax are fp32 whatever the activation dtype. `grouped_attention` runs
a [B, T] block under a [B, T, S] mask (training, prefill); `decode_attention` scores one new token
per row against a layer's KV cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
_F32 = jnp.float32


def rms_norm(x: Array, scale: Array, eps: float) -> Array:
    """RMSNorm over the last axis: x [..., N], scale [N]; fp32 statistics, result [..., N] in x.dtype."""
    x32 = x.astype(_F32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return y.astype(x.dtype) * scale.astype(x.dtype)


def grouped_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """Grouped-query attention.

    Args:
      q: [B, T, Hq, D] queries; k, v: [B, S, Hkv, D]; query head h reads kv head h // (Hq // Hkv).
      mask: [B, T, S] bool, True where query t may attend key s.
    Returns:
      [B, T, Hq * D] in q.dtype. Scores and softmax are fp32.
    """
    b, t, hq, d = q.shape
    hkv = k.shape[2]
    q = q.reshape(b, t, hkv, hq // hkv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=_F32) * (d ** -0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(_F32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, hq * d)


def decode_attention(q: Array, k: Array, v: Array, key_mask: Array) -> Array:
    """Grouped-query attention of one new token per row over a KV cache.

    Args:
      q: [B, Hq, D] queries of the new tokens; query head h reads kv head h // (Hq // Hkv).
      k, v: [B, Hkv, S, D] cached keys and values of one layer (any float dtype).
      key_mask: [B, S] bool, True on the cache slots the token may attend.
    Returns:
      [B, Hq * D] in q.dtype: ``out[b, h] = sum_s softmax_s(q[b, h] . k[b, h // G, s] / sqrt(D))
      * v[b, h // G, s]`` over the slots with ``key_mask[b, s]`` (G = Hq // Hkv); fp32 inside.

    With one query per row the two products are batched matrix-vector products; they are written
    as fp32 multiply-and-reduce so that XLA fuses them with the read of the cache (a bf16 cache is
    converted on the fly, and nothing transposes or copies the cache).
    """
    b, hq, d = q.shape
    hkv = k.shape[1]
    qg = q.astype(_F32).reshape(b, hkv, hq // hkv, 1, d)
    scores = jnp.sum(qg * k.astype(_F32)[:, :, None, :, :], axis=-1) * (d ** -0.5)  # [B,Hkv,G,S]
    scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(_F32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.sum(probs[..., None] * v.astype(_F32)[:, :, None, :, :], axis=-2)  # [B,Hkv,G,D]
    return out.reshape(b, hq * d).astype(q.dtype)
