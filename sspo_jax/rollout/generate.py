"""Batched generation with a KV cache: one jitted program per (batch, prompt bucket, config).

`generate` left-pads prompts to a bucket, prefills the KV cache over the whole padded batch, then
decodes inside one `jax.lax.while_loop` on device (no per-token host round trip), stopping early
once every row has emitted a stop token. The cache lives inside the loop, so XLA updates it in
place. Outputs use the training layout: full rows ``[prompt (left-padded) | response
(right-padded)]`` of width ``P_bucket + max_new_tokens`` with explicit masks.

On a device mesh (the parameters placed by `sspo_jax.parallel.shard_params`), the prompt rows are
split over the mesh's batch axes (data, fsdp) and stay split through prefill, the KV cache and the
decode loop; the outputs come back split the same way. Every process of a multi-host job passes
the same global prompts and keeps only the rows its devices hold.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sspo_jax.models.kv_cache import decode_step, decode_weights, init_cache, prefill
from sspo_jax.parallel.host_data import place
from sspo_jax.parallel.mesh import BATCH_AXES
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


def _row_constraint(mesh: Optional[Mesh], split: bool):
    """``x -> x`` with its rows (dim 0) pinned: split over (data, fsdp) when `split`, else whole on
    every device; other dimensions are left to XLA. Identity without a mesh; scalars untouched."""
    if mesh is None:
        return lambda x: x
    row_axes = BATCH_AXES if split else None

    def pin(x):
        if x.ndim == 0:
            return x
        spec = P(row_axes, *([P.UNCONSTRAINED] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    return pin


def _cache_constraint(mesh: Optional[Mesh], split: bool):
    """Pins the KV cache's batch dimension: dim 0 of every array (per-layer keys/values
    [B, Hkv, S, D], mask, positions)."""
    if mesh is None:
        return lambda c: c
    rows = _row_constraint(mesh, split)
    return lambda cache: jax.tree.map(rows, cache)


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "mesh", "split", "replicate"))
def _generate(graphdef, state, tokens: Array, prompt_mask: Array, rng: Array, cfg: SamplingConfig,
              mesh: Optional[Mesh] = None, split: bool = True, replicate: bool = False):
    """With a `mesh`, rows stay split over its (data, fsdp) axes (`split`) or whole on every device;
    `replicate` all-gathers the outputs onto every device (readable by every process)."""
    _TRACES["count"] += 1
    model = nnx.merge(graphdef, state)
    b, p = tokens.shape
    n = cfg.max_new_tokens
    rows, pin_cache = _row_constraint(mesh, split), _cache_constraint(mesh, split)
    tokens, prompt_mask = rows(tokens), rows(prompt_mask)
    cache = pin_cache(init_cache(model.config, b, p + n, jnp.dtype(cfg.cache_dtype)))
    logits, cache = prefill(model, tokens, prompt_mask, cache)
    logits, cache = rows(logits), pin_cache(cache)
    weights = decode_weights(model)  # per-layer weight slices, once: the loop body reads them in place
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
        logits, cache = decode_step(model, tok, cache, weights)
        return i + 1, pin_cache(cache), rows(logits), rows(done), rows(out_tok), rows(out_lp), rows(out_mask)

    init = (jnp.zeros((), jnp.int32), cache, logits, rows(jnp.zeros((b,), bool)),
            rows(jnp.full((b, n), cfg.pad_token_id, jnp.int32)), rows(jnp.zeros((b, n), jnp.float32)),
            rows(jnp.zeros((b, n), bool)))
    steps, _, _, done, out_tok, out_lp, out_mask = jax.lax.while_loop(cond, body, init)
    pm = prompt_mask.astype(bool)
    zeros = jnp.zeros((b, p), bool)
    out = GenerationResult(
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
    if mesh is None:
        return out
    if replicate or not split:
        everywhere = NamedSharding(mesh, P())
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, everywhere), out)
    return jax.tree.map(rows, out)


def _mesh_of(state: Any) -> Optional[Mesh]:
    """The mesh the parameters are placed on (a `NamedSharding` over the data/fsdp axes), or None."""
    for leaf in jax.tree.leaves(state):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and set(BATCH_AXES) <= set(sharding.mesh.axis_names):
            return sharding.mesh
    return None


def _replicate_key(rng: Array, mesh: Mesh) -> Array:
    """The PRNG key on every device of `mesh` (a key made by `jax.random.key` lives on one device,
    which a computation spanning several processes cannot take)."""
    everywhere = NamedSharding(mesh, P())
    if getattr(rng, "sharding", None) == everywhere:
        return rng
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        data = place(np.asarray(jax.random.key_data(rng)), everywhere)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(rng))
    return place(np.asarray(rng), everywhere)


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
             group_size: int = 1, mesh: Optional[Mesh] = None,
             replicate_outputs: Optional[bool] = None) -> GenerationResult:
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
      mesh: split the rows over this mesh's (data, fsdp) axes; None takes the mesh the parameters
        are placed on (no mesh: one device, as before). Row counts that the data x fsdp size does not
        divide are replicated over the mesh instead. Sampling does not depend on the split: the
        same key gives the same tokens on any mesh.
      replicate_outputs: gather the outputs onto every device, so that every process can read them
        with `np.asarray`. None (default): only in a multi-process job; a single process can read
        row-split outputs anyway. The trainer passes False and reads its own rows
        (`sspo_jax.parallel.local_rows`).
    Returns:
      `GenerationResult` of B * G rows (split over the mesh's batch axes, unless replicated).
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
    mesh = mesh if mesh is not None else _mesh_of(state)
    if mesh is None:
        return _generate(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask), rng, cfg)
    if replicate_outputs is None:
        replicate_outputs = jax.process_count() > 1
    split = tokens.shape[0] % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0  # else (a short last
    # evaluation batch, say) every device decodes every row
    where = NamedSharding(mesh, P(BATCH_AXES, None) if split else P())
    return _generate(graphdef, state, place(tokens, where), place(mask, where), _replicate_key(rng, mesh), cfg,
                     mesh=mesh, split=split, replicate=bool(replicate_outputs))
