"""Next-token sampling from logits: temperature, top-k, top-p, greedy; all in fp32.

`sample_token` returns the sampled ids and their log-probability under the distribution that was
actually sampled from (tempered, truncated and renormalised); greedy decoding reports 0 (a point
mass). The trainer recomputes log-probs with its own forward pass; comparing the two measures
sampler/trainer drift (PITFALLS.md 5).

Sampling draws one uniform number per row and inverts the cumulative distribution blockwise
(`sample_from_logits`), so a step costs two passes over the [B, V] logits and no [B, V] random
numbers or log-softmax (Gumbel-max sampling, `jax.random.categorical`, draws V random numbers
per row: with a 152k vocabulary that costs far more than the model's forward step on a CPU).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sspo_jax.rollout.config import SamplingConfig

Array = jax.Array
_NEG = -jnp.inf


def processed_logits(logits: Array, cfg: SamplingConfig) -> Array:
    """Tempered logits [B, V] fp32 with tokens outside top-k / top-p set to -inf."""
    x = logits.astype(jnp.float32)
    if not cfg.greedy:
        x = x / cfg.temperature
    if cfg.top_k > 0 and cfg.top_k < x.shape[-1]:
        kth = jax.lax.top_k(x, cfg.top_k)[0][:, -1:]
        x = jnp.where(x >= kth, x, _NEG)
    if cfg.top_p < 1.0:
        sorted_x = jnp.sort(x, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_x, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted token
        keep = before < cfg.top_p  # the first token is always kept
        threshold = jnp.min(jnp.where(keep, sorted_x, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x >= threshold, x, _NEG)
    return x


def _last_positive(mass: Array) -> Array:
    """[B] index of the last entry > 0 along the last axis of `mass` [B, N] (0 when none)."""
    idx = jnp.arange(mass.shape[-1], dtype=jnp.int32)
    return jnp.max(jnp.where(mass > 0, idx, 0), axis=-1)


def sample_from_logits(x: Array, rng: Array) -> tuple[Array, Array]:
    """Draws token t with probability softmax(x)[t] per row; returns (t [B] int32, log p(t) [B]).

    Args:
      x: [B, V] fp32 logits, -inf on excluded tokens (at least one finite per row).
      rng: PRNG key; one uniform number u ~ U[0, 1) per row.
    Returns:
      tokens: the smallest t with ``sum_{s <= t} e_s > u * Z`` where ``e = exp(x - max x)`` and
        ``Z = sum e`` (inverse-CDF sampling); a token with e_t = 0 is never drawn.
      log-probs: ``x_t - max x - log Z`` in fp32 (the log-softmax of the drawn token).

    The vocabulary is cut into blocks of about sqrt(V) tokens: the cumulative mass of the blocks
    picks the block, then the cumulative mass inside that one block picks the token, so no
    [B, V] cumulative sum, random tensor or log-softmax is built.
    """
    b, v = x.shape
    width = min(v, 1 << max(0, math.ceil(math.log2(math.sqrt(v)))))
    n_blocks = -(-v // width)
    m = jnp.max(x, axis=-1, keepdims=True)
    e = jnp.exp(x - m)  # [B, V] in (0, 1], 0 on excluded tokens
    if n_blocks * width != v:
        e = jnp.pad(e, ((0, 0), (0, n_blocks * width - v)))
    e = e.reshape(b, n_blocks, width)
    block_mass = jnp.sum(e, axis=-1)  # [B, n]
    cum = jnp.cumsum(block_mass, axis=-1)
    z = cum[:, -1]
    u = jax.random.uniform(rng, (b,), jnp.float32) * z  # [0, Z)
    j = jnp.minimum(jnp.sum(cum <= u[:, None], axis=-1, dtype=jnp.int32), _last_positive(block_mass))
    before = jnp.where(j > 0, jnp.take_along_axis(cum, jnp.maximum(j - 1, 0)[:, None], -1)[:, 0], 0.0)
    inner = jnp.take_along_axis(e, j[:, None, None], axis=1)[:, 0]  # [B, width]
    inner_cum = before[:, None] + jnp.cumsum(inner, axis=-1)
    i = jnp.minimum(jnp.sum(inner_cum <= u[:, None], axis=-1, dtype=jnp.int32), _last_positive(inner))
    tokens = j * width + i
    logp = jnp.take_along_axis(x, tokens[:, None], axis=-1)[:, 0] - m[:, 0] - jnp.log(z)
    return tokens, logp


def sample_token(logits: Array, rng: Array, cfg: SamplingConfig) -> tuple[Array, Array]:
    """Samples one token per row.

    Args:
      logits: [B, V] next-token logits.
      rng: a PRNG key (rows draw independently from it).
    Returns:
      (tokens [B] int32, log-probs [B] fp32 under the sampling distribution). Greedy
      (temperature 0): the argmax of the logits (lowest id on ties; top-k / top-p cannot change
      it) with log-prob 0. Otherwise a draw from softmax(processed_logits) by
      `sample_from_logits`, with its log-softmax.
    """
    if cfg.greedy:
        tokens = jnp.argmax(logits.astype(jnp.float32), axis=-1).astype(jnp.int32)
        return tokens, jnp.zeros(logits.shape[:1], jnp.float32)
    return sample_from_logits(processed_logits(logits, cfg), rng)
