"""Chunked per-token log-probabilities and entropies from hidden states.

The vocabulary projection of a 152k-token vocabulary dominates memory: full fp32 logits for
B x T tokens cost 4 * B * T * V bytes (PITFALLS.md #6). `token_logprobs_and_entropy` projects the
hidden states to the vocabulary one sequence chunk at a time inside a `jax.lax.scan` whose body is
wrapped in `jax.checkpoint`, so the forward and the backward pass hold O(B x chunk x V) logits
instead of O(B x T x V). Per-token log-probs are `logit[target] - logsumexp(logits)` in fp32; a
full log-softmax is never formed. Gradients flow into the hidden states and the unembedding
through the log-probs and the entropies.

Alignment:
  * `token_logprobs_and_entropy(hidden, w, targets)` is *aligned*: row t of `hidden` scores
    `targets[:, t]`.
  * `token_logprobs_from_hidden(hidden, w, tokens)` follows the package convention
    `logp[b, t] = log p(tokens[b, t] | tokens[b, :t])`: hidden state t - 1 predicts token t,
    and column 0 (no context) is 0, as is its entropy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array
_F32 = jnp.float32


def _as_vh(unembed: Array, layout: str) -> Array:
    if layout == "vh":
        return unembed
    if layout == "hv":
        return unembed.T
    raise ValueError(f"unembed_layout must be 'vh' ([V, H]) or 'hv' ([H, V]), got {layout!r}")


def _chunk_stats(w: Array, h: Array, y: Array, compute_entropy: bool):
    """Stats of one chunk. w: [V, H]; h: [B, C, H]; y: [B, C] -> (logp, entropy or None) [B, C]."""
    logits = jnp.einsum("bch,vh->bcv", h, w.astype(h.dtype), preferred_element_type=_F32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, y[..., None], axis=-1, mode="clip")[..., 0]
    logp = target_logit - lse
    if not compute_entropy:
        return logp, None
    probs = jnp.exp(logits - lse[..., None])
    return logp, lse - jnp.sum(probs * logits, axis=-1)


def token_logprobs_and_entropy(hidden: Array, unembed: Array, targets: Array, *,
                               chunk_size: int = 512, compute_entropy: bool = True,
                               unembed_layout: str = "vh") -> tuple[Array, Array | None]:
    """log p(targets) and full-vocabulary entropy, chunked over the sequence axis.

    Args:
      hidden: [B, T, H] hidden states (any float dtype; the matmul runs in this dtype with an
        fp32 result).
      unembed: LM head weight, [V, H] (`unembed_layout="vh"`, the layout of
        `Qwen2ForCausalLM.unembed_weight()`) or [H, V] (`"hv"`).
      targets: [B, T] int token ids in [0, V); row t of `hidden` scores `targets[:, t]`.
      chunk_size: tokens per chunk along T; need not divide T (the tail is padded internally).
      compute_entropy: also return H[b, t] = -sum_v p_v log p_v (fp32).
    Returns:
      (logp [B, T] fp32, entropy [B, T] fp32 or None). Peak memory O(B x chunk_size x V).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    w = _as_vh(unembed, unembed_layout)
    b, t, hdim = hidden.shape
    if w.shape[1] != hdim:
        raise ValueError(f"unembed has hidden size {w.shape[1]} but hidden states have {hdim} "
                         f"(unembed shape {unembed.shape}, layout {unembed_layout!r})")
    c = min(chunk_size, t)
    n = -(-t // c)
    pad = n * c - t
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))) if pad else hidden
    y = jnp.pad(targets, ((0, 0), (0, pad))) if pad else targets
    h = h.reshape(b, n, c, hdim).swapaxes(0, 1)  # [n, B, C, H]
    y = y.reshape(b, n, c).swapaxes(0, 1)  # [n, B, C]
    stats = jax.checkpoint(functools.partial(_chunk_stats, compute_entropy=compute_entropy),
                           prevent_cse=False)

    def body(w, xs):
        return w, stats(w, *xs)

    _, (logp, ent) = jax.lax.scan(body, w, (h, y))

    def unchunk(a):
        return a.swapaxes(0, 1).reshape(b, n * c)[:, :t]

    return unchunk(logp), (unchunk(ent) if compute_entropy else None)


def token_logprobs_from_hidden(hidden: Array, unembed: Array, tokens: Array, *,
                               chunk_size: int = 512, compute_entropy: bool = True,
                               unembed_layout: str = "vh", start: int = 1) -> tuple[Array, Array | None]:
    """Package-convention log-probs of a row's own tokens: `logp[b, t] = log p(tok_t | tok_<t)`.

    Args:
      hidden: [B, T, H] final hidden states of the full rows `tokens`.
      unembed, chunk_size, compute_entropy, unembed_layout: as in `token_logprobs_and_entropy`.
      tokens: [B, T] the same token rows that produced `hidden`.
      start: the first column scored (static, 1 <= start <= T), e.g. the prompt width P of
        left-padded rows, so that only the response columns are projected onto the vocabulary
        (the projection's cost and memory scale with the scored columns, and a 152k-token head
        dominates a small model's step). Columns before `start` are 0.
    Returns:
      (logp [B, T], entropy [B, T] or None), fp32; columns ``< start`` (column 0 always: token 0
      has no context) are 0 in both. `entropy[b, t]` is the entropy of the distribution that
      token t was drawn from. Mask the result with the response mask: positions under padding
      are meaningless.
    """
    t = tokens.shape[1]
    if not 1 <= start <= t:
        raise ValueError(f"start={start} must be in [1, {t}] (the row width)")
    if start == t:  # nothing to score
        zeros = jnp.zeros(tokens.shape, _F32)
        return zeros, (zeros if compute_entropy else None)
    logp, ent = token_logprobs_and_entropy(hidden[:, start - 1:-1], unembed, tokens[:, start:],
                                           chunk_size=chunk_size, compute_entropy=compute_entropy,
                                           unembed_layout=unembed_layout)
    pad = ((0, 0), (start, 0))
    return jnp.pad(logp, pad), (jnp.pad(ent, pad) if ent is not None else None)


def naive_token_logprobs_and_entropy(hidden: Array, unembed: Array, targets: Array, *,
                                     compute_entropy: bool = True, unembed_layout: str = "vh"):
    """Unchunked reference of `token_logprobs_and_entropy` (materialises [B, T, V] fp32 logits).

    For tests and benchmarks only; same arguments and alignment as the chunked version.
    """
    return _chunk_stats(_as_vh(unembed, unembed_layout), hidden, targets, compute_entropy)
