"""Batched generation with a KV cache: one jitted program per (batch, prompt bucket, config).

`generate` left-pads prompts to a bucket, prefills the KV cache over the whole padded batch, then
decodes inside one `jax.lax.while_loop` on device (no per-token host round trip), stopping early
once every row has emitted a stop token. The cache lives inside the loop, so XLA updates it in
place. Outputs use the training layout: full rows ``[prompt (left-padded) | response
(right-padded)]`` of width ``P_bucket + max_new_tokens`` with explicit masks.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sspo_jax.models.kv_cache import decode_step, init_cache, prefill
from sspo_jax.rollout.config import SamplingConfig, SamplingError, validate_vocab
from sspo_jax.rollout.sampling import sample_token

Array = jax.Array
ModelLike = Union[nnx.Module, tuple[Any, Any]]  # a policy, or (graphdef, state) from nnx.split

_TRACES = {"count": 0}


def trace_count() -> int:
    """How many times the generation program has been traced (compiled) in this process."""
    return _TRACES["count"]


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["tokens", "attention_mask", "prompt_mask", "response_mask", "sampler_logp",
                                "response_lengths", "truncated", "num_steps"],
                   meta_fields=["prompt_len"])
@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """Generated rows, all [B, P + N] unless noted (P = prompt bucket, N = max_new_tokens).

    Attributes:
      tokens: int32 prompt then response tokens (pad after a row stopped).
      attention_mask: bool, real prompt tokens and response tokens.
      prompt_mask: bool, real prompt tokens.
      response_mask: bool, generated tokens up to and including the stop token.
      sampler_logp: fp32 log-prob of each response token under the sampling distribution (0 elsewhere).
      response_lengths: int32 [B], number of response tokens (stop token included).
      truncated: bool [B], the row reached N tokens without a stop token.
      num_steps: int32 [], decoding steps run (fewer than N when every row stopped early).
      prompt_len: P, the static prompt width (responses start at column P).
    """

    tokens: Array
    attention_mask: Array
    prompt_mask: Array
    response_mask: Array
    sampler_logp: Array
    response_lengths: Array
    truncated: Array
    num_steps: Array
    prompt_len: int

    @property
    def responses(self) -> Array:
        """Response tokens [B, N]."""
        return self.tokens[:, self.prompt_len:]


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg"))
def _generate(graphdef, state, tokens: Array, prompt_mask: Array, rng: Array, cfg: SamplingConfig):
    _TRACES["count"] += 1
    model = nnx.merge(graphdef, state)
    b, p = tokens.shape
    n = cfg.max_new_tokens
    cache = init_cache(model.config, b, p + n, jnp.dtype(cfg.cache_dtype))
    logits, cache = prefill(model, tokens, prompt_mask, cache)
    eos = jnp.asarray(cfg.eos_token_ids or (-1,), jnp.int32)

    def cond(carry):
        i, _, _, done, *_ = carry
        return (i < n) & ~jnp.all(done)

    def body(carry):
        i, cache, logits, done, out_tok, out_lp, out_mask = carry
        tok, lp = sample_token(logits, jax.random.fold_in(rng, i), cfg)
        live = ~done
        tok = jnp.where(live, tok, cfg.pad_token_id)
        out_tok = jax.lax.dynamic_update_slice(out_tok, tok[:, None], (0, i))
        out_lp = jax.lax.dynamic_update_slice(out_lp, jnp.where(live, lp, 0.0)[:, None], (0, i))
        out_mask = jax.lax.dynamic_update_slice(out_mask, live[:, None], (0, i))
        done = done | (live & jnp.isin(tok, eos))
        logits, cache = decode_step(model, tok, cache)
        return i + 1, cache, logits, done, out_tok, out_lp, out_mask

    init = (jnp.zeros((), jnp.int32), cache, logits, jnp.zeros((b,), bool),
            jnp.full((b, n), cfg.pad_token_id, jnp.int32), jnp.zeros((b, n), jnp.float32), jnp.zeros((b, n), bool))
    steps, _, _, done, out_tok, out_lp, out_mask = jax.lax.while_loop(cond, body, init)
    pm = prompt_mask.astype(bool)
    zeros = jnp.zeros((b, p), bool)
    return GenerationResult(
        tokens=jnp.concatenate([tokens.astype(jnp.int32), out_tok], axis=1),
        attention_mask=jnp.concatenate([pm, out_mask], axis=1),
        prompt_mask=jnp.concatenate([pm, jnp.zeros((b, n), bool)], axis=1),
        response_mask=jnp.concatenate([zeros, out_mask], axis=1),
        sampler_logp=jnp.concatenate([jnp.zeros((b, p), jnp.float32), out_lp], axis=1),
        response_lengths=jnp.sum(out_mask, axis=1, dtype=jnp.int32),
        truncated=~done,
        num_steps=steps,
        prompt_len=p,
    )


def pad_to_bucket(prompt_tokens, prompt_mask, cfg: SamplingConfig) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads host prompt arrays [B, P] to the prompt bucket of P (pad id, mask 0)."""
    tokens = np.asarray(prompt_tokens, np.int32)
    mask = np.asarray(prompt_mask).astype(bool)
    if tokens.ndim != 2 or tokens.shape != mask.shape:
        raise SamplingError(f"prompt_tokens {tokens.shape} and prompt_mask {mask.shape} must be equal [B, P] shapes")
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise SamplingError(f"prompt rows {empty.tolist()} have no real token (prompt_mask all 0)")
    width = cfg.bucket_for(int(tokens.shape[1]))
    extra = width - tokens.shape[1]
    if extra:
        tokens = np.concatenate([np.full((tokens.shape[0], extra), cfg.pad_token_id, np.int32), tokens], axis=1)
        mask = np.concatenate([np.zeros((mask.shape[0], extra), bool), mask], axis=1)
    return tokens, mask


def generate(model: ModelLike, prompt_tokens, prompt_mask, cfg: SamplingConfig, rng: Array, *,
             group_size: int = 1) -> GenerationResult:
    """Samples responses for a batch of prompts.

    Args:
      model: a `Qwen2ForCausalLM`, or its ``(graphdef, state)`` from `nnx.split` (cheaper when
        called every step: split once and pass the pair).
      prompt_tokens: int [B, P] prompts, left-padded (any layout works: the mask is explicit).
      prompt_mask: [B, P] 1 on real prompt tokens; every row needs at least one.
      cfg: sampling settings (static).
      rng: PRNG key; the same key gives the same result.
      group_size: G; each prompt is repeated G times in consecutive rows ([p0]*G + [p1]*G ...), and
        the rows sample independently.
    Returns:
      `GenerationResult` of B * G rows.
    """
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)
        vocab = model.config.vocab_size
    else:
        graphdef, state = model
        vocab = None
    if vocab is not None:
        validate_vocab(cfg, vocab)
    if group_size < 1:
        raise SamplingError(f"group_size={group_size} must be >= 1")
    tokens, mask = pad_to_bucket(prompt_tokens, prompt_mask, cfg)
    if group_size > 1:
        tokens, mask = np.repeat(tokens, group_size, axis=0), np.repeat(mask, group_size, axis=0)
    return _generate(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask), rng, cfg)
