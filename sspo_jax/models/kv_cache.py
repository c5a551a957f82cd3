"""KV-cache decoding (Qwen2, Qwen3, Llama): a donatable cache pytree plus prefill and decode steps.

All shapes are static, so `prefill` and `decode_step` can be jitted once and `decode_step` can
run inside `jax.lax.while_loop` (the rollout engine does this). The cache is a `KVCache`
NamedTuple (a pytree): donate it to the jitted step (`donate_argnums`) to update it in place.

Layout: one key and one value buffer per layer, each [B, Hkv, S, D]. Separate buffers let XLA
write each step's row in place and read a layer's cache where it lies; with a single stacked
[L, ...] buffer, XLA copies the whole cache at every layer of every decoding step.

Inside a decoding loop, compute `decode_weights(model)` once before the loop and pass it to every
`decode_step`: it holds the per-layer weight slices (and the LM head) in compute dtype, so that
the loop body reads the weights in place instead of copying every layer's weights per step.

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

from sspo_jax.models.config import DecoderConfig
from sspo_jax.models.decoder import DecoderForCausalLM, positions_from_mask

Array = jax.Array


class KVCache(NamedTuple):
    """Decoding state; every array field has the batch on dimension 0.

    Attributes:
      keys, values: L per-layer buffers, each [B, Hkv, S, D], of post-RoPE keys and values
        (fp32 or bf16).
      mask: [B, S] bool, True on slots holding a real token.
      index: [] int32, the slot the next token is written to (shared by all rows).
      positions: [B] int32, position id of the next token of each row.
    """

    keys: tuple[Array, ...]
    values: tuple[Array, ...]
    mask: Array
    index: Array
    positions: Array

    @property
    def max_len(self) -> int:
        """S, the number of slots."""
        return self.mask.shape[1]

    @property
    def dtype(self):
        """Storage dtype of the keys and values."""
        return self.keys[0].dtype

    @property
    def k(self) -> Array:
        """All keys stacked as [L, B, S, Hkv, D] (a copy, for inspection; decoding never builds it)."""
        return jnp.stack([x.transpose(0, 2, 1, 3) for x in self.keys])

    @property
    def v(self) -> Array:
        """All values stacked as [L, B, S, Hkv, D] (a copy, for inspection)."""
        return jnp.stack([x.transpose(0, 2, 1, 3) for x in self.values])


class DecodeWeights(NamedTuple):
    """Weights in the layout `decode_step` reads, prepared once per decoding loop.

    Attributes:
      layers: L dicts of layer l's parameters (no layer axis) in compute dtype, as
        `DecoderStack.per_layer` returns them.
      unembed: [V, H] LM head (the embedding when tied) in compute dtype.
    """

    layers: tuple[dict[str, Array], ...]
    unembed: Array


def decode_weights(model: DecoderForCausalLM) -> DecodeWeights:
    """Per-layer weight slices and the LM head in compute dtype, for `decode_step` in a loop.

    Call it once outside `jax.lax.while_loop` / `fori_loop` (inside the same jit). It costs one
    copy of the layer weights (and of the head when compute dtype differs from parameter dtype)
    per call, instead of one per decoded token.
    """
    cdt = model.compute_dtype
    return DecodeWeights(layers=model.model.layers.per_layer(cdt),
                         unembed=model.unembed_weight().astype(cdt))


def init_cache(config: DecoderConfig, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    """An empty cache for `batch` rows of up to `max_len` tokens, keys/values in `dtype`."""
    shape = (batch, config.num_key_value_heads, max_len, config.head_dim)
    n = config.num_hidden_layers
    return KVCache(
        keys=tuple(jnp.zeros(shape, dtype) for _ in range(n)),
        values=tuple(jnp.zeros(shape, dtype) for _ in range(n)),
        mask=jnp.zeros((batch, max_len), jnp.bool_),
        index=jnp.zeros((), jnp.int32), positions=jnp.zeros((batch,), jnp.int32))


def prefill(model: DecoderForCausalLM, tokens: Array, attention_mask: Array,
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
    zeros4 = (0, 0, 0, 0)

    def fill(buffers, new):  # new: [L, B, T, Hkv, D] -> slots [0, T) of each [B, Hkv, S, D]
        return tuple(jax.lax.dynamic_update_slice(
            jnp.zeros_like(buf), new[i].transpose(0, 2, 1, 3).astype(buf.dtype), zeros4)
            for i, buf in enumerate(buffers))

    new = KVCache(
        keys=fill(cache.keys, k), values=fill(cache.values, v),
        mask=jax.lax.dynamic_update_slice(jnp.zeros_like(cache.mask), mask, (0, 0)),
        index=jnp.asarray(t, jnp.int32),
        positions=jnp.sum(mask, axis=1, dtype=jnp.int32))
    return model.logits_from_hidden(h_last), new


def decode_step(model: DecoderForCausalLM, token: Array, cache: KVCache,
                weights: DecodeWeights | None = None) -> tuple[Array, KVCache]:
    """Feeds one token per row and returns the next-token logits.

    Args:
      model: the policy.
      token: [B] int, the token each row appends.
      cache: state after `prefill` or a previous `decode_step`.
      weights: `decode_weights(model)`, computed once outside the decoding loop (default:
        prepared here, which inside a loop costs a copy of the layer weights per step).
    Returns:
      (logits [B, V] fp32 for the token after `token`, updated cache). ``logits = h_L @ W^T``
      with h_L the final-norm hidden state of the token and W the [V, H] LM head, fp32 result.
    """
    if weights is None:
        weights = decode_weights(model)
    b = token.shape[0]
    mask = jax.lax.dynamic_update_slice(cache.mask, jnp.ones((b, 1), jnp.bool_),
                                        (jnp.zeros((), jnp.int32), cache.index))
    hidden, keys, values = model.model.decode(token[:, None], cache.positions[:, None], cache.keys,
                                              cache.values, mask, cache.index, layers=weights.layers)
    new = KVCache(keys=keys, values=values, mask=mask, index=cache.index + 1,
                  positions=cache.positions + 1)
    h = hidden[:, 0].astype(weights.unembed.dtype)
    logits = jnp.einsum("bh,vh->bv", h, weights.unembed, preferred_element_type=jnp.float32)
    return logits, new
