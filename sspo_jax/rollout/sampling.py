"""Next-token sampling from logits: temperature, top-k, top-p, greedy; all in fp32.

`sample_token` returns the sampled ids and their log-probability under the distribution that was
actually sampled from (tempered, truncated and renormalised); greedy decoding reports 0 (a point
mass). The trainer recomputes log-probs with its own forward pass; comparing the two measures
sampler/trainer drift (PITFALLS.md 5).
"""

from __future__ import annotations

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


def sample_token(logits: Array, rng: Array, cfg: SamplingConfig) -> tuple[Array, Array]:
    """Samples one token per row.

    Args:
      logits: [B, V] next-token logits.
      rng: a PRNG key (rows draw independently from it).
    Returns:
      (tokens [B] int32, log-probs [B] fp32 under the sampling distribution).
    """
    x = processed_logits(logits, cfg)
    if cfg.greedy:
        return jnp.argmax(x, axis=-1).astype(jnp.int32), jnp.zeros(x.shape[:1], jnp.float32)
    tokens = jax.random.categorical(rng, x, axis=-1).astype(jnp.int32)
    logp = jnp.take_along_axis(jax.nn.log_softmax(x, axis=-1), tokens[:, None], axis=-1)[:, 0]
    return tokens, logp
