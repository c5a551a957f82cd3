"""KV-cache decoding for Qwen2: an explicit, donatable cache pytree plus prefill and decode steps.

All shapes are static, so `prefill` and `decode_step` can be jitted once and `decode_step` can
run inside `jax.lax.while_loop` (the rollout engine does this). The cache is a `KVCache`
NamedTuple (a pytree): donate it to the jitted step (`donate_argnums`) to update it in place.

Slots: `prefill` writes the T prompt tokens (left-padded; any padding layout works since
`mask` marks valid slots) into slots [0, T); each `decode_step` writes one token per row into
slot `index` and advances `index` and the per-row `positions`. Positions follow the package
convention (number of real tokens before this one), so decoding reproduces the full forward
pass over prompt + response rows exactly. `max_len` must be at least prompt length + number of
decode steps: the write index is not bounds-checked inside traced code (XLA clamps it).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sspo_jax.models.config import Qwen2Config
from sspo_jax.models.qwen2 import Qwen2ForCausalLM, positions_from_mask

Array = jax.Array


class KVCache(NamedTuple):
    """Decoding state.

    Attributes:
      k, v: [L, B, S, Hkv, D] post-RoPE keys and values (fp32 or bf16).
      mask: [B, S] bool, True on slots holding a real token.
      index: [] int32, the slot the next token is written to (shared by all rows).
      positions: [B] int32, position id of the next token of each row.
    """

    k: Array
    v: Array
    mask: Array
    index: Array
    positions: Array

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


def init_cache(config: Qwen2Config, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    """An empty cache for `batch` rows of up to `max_len` tokens, k/v in `dtype`."""
    shape = (config.num_hidden_layers, batch, max_len, config.num_key_value_heads, config.head_dim)
    return KVCache(
        k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
        mask=jnp.zeros((batch, max_len), jnp.bool_),
        index=jnp.zeros((), jnp.int32), positions=jnp.zeros((batch,), jnp.int32))


def prefill(model: Qwen2ForCausalLM, tokens: Array, attention_mask: Array,
            cache: KVCache) -> tuple[Array, KVCache]:
    """Runs the prompt through the model and fills slots [0, T) of a fresh cache.

    Args:
      model: the policy.
      tokens: [B, T] int prompt tokens (left-padded by convention).
      attention_mask: [B, T], 1 on real prompt tokens.
      cache: from `init_cache` with max_len >= T; its previous contents are discarded.
    Returns:
      (logits [B, V] fp32 at each row's last real prompt token, updated cache).
    """
    b, t = tokens.shape
    if t > cache.max_len:
        raise ValueError(f"prompt length {t} exceeds the cache max_len {cache.max_len}")
    mask = attention_mask.astype(jnp.bool_)
    hidden, (k, v) = model.model(tokens, mask, positions_from_mask(mask), return_kv=True)
    last = jnp.max(jnp.where(mask, jnp.arange(t)[None, :], 0), axis=1)  # [B]
    h_last = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    zeros5 = (0, 0, 0, 0, 0)
    new = KVCache(
        k=jax.lax.dynamic_update_slice(jnp.zeros_like(cache.k), k.astype(cache.k.dtype), zeros5),
        v=jax.lax.dynamic_update_slice(jnp.zeros_like(cache.v), v.astype(cache.v.dtype), zeros5),
        mask=jax.lax.dynamic_update_slice(jnp.zeros_like(cache.mask), mask, (0, 0)),
        index=jnp.asarray(t, jnp.int32),
        positions=jnp.sum(mask, axis=1, dtype=jnp.int32))
    return model.logits_from_hidden(h_last), new


def decode_step(model: Qwen2ForCausalLM, token: Array, cache: KVCache) -> tuple[Array, KVCache]:
    """Feeds one token per row and returns the next-token logits.

    Args:
      model: the policy.
      token: [B] int, the token each row appends.
      cache: state after `prefill` or a previous `decode_step`.
    Returns:
      (logits [B, V] fp32 for the token after `token`, updated cache).
    """
    b = token.shape[0]
    mask = jax.lax.dynamic_update_slice(cache.mask, jnp.ones((b, 1), jnp.bool_),
                                        (jnp.zeros((), jnp.int32), cache.index))
    hidden, k, v = model.model.decode(token[:, None], cache.positions[:, None], cache.k,
                                      cache.v, mask, cache.index)
    new = KVCache(k=k, v=v, mask=mask, index=cache.index + 1, positions=cache.positions + 1)
    return model.logits_from_hidden(hidden[:, 0]), new
