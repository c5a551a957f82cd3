"""Flax NNX decoder of the Qwen2, Qwen3 and Llama families: RMSNorm, RoPE, grouped-query
attention, SwiGLU MLP, (un)tied LM head; `DecoderConfig.model_type` selects the family's flags
(q/k/v bias for qwen2, per-head q/k RMSNorm for qwen3, llama3 RoPE scaling for llama).

Layout decisions (read these before writing sharding rules or converters):

* Layer parameters are *stacked*: every per-layer tensor has a leading axis of size L
  (`DecoderStack.q_kernel` is [L, H, heads*head_dim]) and the layers run under one
  `jax.lax.scan`. Compile time is then independent of depth, and `remat=True` wraps the scanned
  layer body in `jax.checkpoint` (activations recomputed per layer in the backward pass).
  `scan_layers=False` unrolls that scan (the same program, one copy per layer): no stacked
  residual buffers to fill and slice, which makes a shallow model's update about 8% faster on
  XLA's CPU backend, at a compile time that grows with depth.
* Training activations are token-flattened, [B*T, H], around every projection: with [B, T, H]
  operands XLA's CPU backend copied each [B, T, I] activation gradient into a transposed layout
  before its weight-gradient matmul (a quarter of the tiny model's update time).
  Decoding one token (`DecoderModel.decode`) is the exception: it unrolls the layers over per-layer
  weight slices and per-layer KV-cache buffers prepared once per decoding loop
  (`DecoderStack.per_layer`), because XLA copies what a scan slices at every step; its compile
  time grows with depth (about 0.3 s per layer on a 2-core CPU).
* Linear kernels are stored [in, out] (HF stores [out, in]; `hf_io` transposes). The token
  embedding and the untied LM head are both stored [V, H], as in HF, so `unembed_weight()` has
  one layout whether or not the embeddings are tied.
* Parameter paths (what `nnx.split(model, nnx.Param)` yields and what a sharding rule sees):
  `model/embed` [V, H], `model/final_norm` [H], `model/layers/<name>` [L, ...], `lm_head` [V, H]
  (absent when `tie_word_embeddings`); `model/layers/q_norm`, `k_norm` [L, D] only with `qk_norm`.
* Dtypes: parameters are stored in `param_dtype` (fp32 default) and cast to `compute_dtype` at
  use (bf16 compute keeps fp32 master weights). RMS statistics, RoPE angles, attention softmax and
  logits are always fp32.

Conventions (DESIGN.md): a row is a left-padded prompt followed by a right-padded response;
`attention_mask` [B, T] is 1 on real tokens. Positions default to `cumsum(mask) - 1` clipped at 0.
Attention is causal and ignores padded keys; a query row whose keys are all padding (left padding)
gets a uniform softmax over masked scores instead of NaN, and its output is meaningless but finite.

The model is meant to be split once (`graphdef, params = nnx.split(model, nnx.Param)`) and merged
inside `jax.jit`; it holds no state besides `nnx.Param`s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sspo_jax.models.attention import decode_attention, grouped_attention, rms_norm
from sspo_jax.models.config import DecoderConfig
from sspo_jax.models.rope import apply_rope, rope_inv_freq
from sspo_jax.models.token_stats import token_logprobs_from_hidden

Array = jax.Array
_F32 = jnp.float32
_INIT_STD = 0.02

# Names of the stacked per-layer parameters, in a fixed order.
LAYER_PARAM_NAMES = (
    "input_norm", "q_kernel", "q_bias", "k_kernel", "k_bias", "v_kernel", "v_bias", "q_norm",
    "k_norm", "o_kernel", "post_norm", "gate_kernel", "up_kernel", "down_kernel",
)



def positions_from_mask(attention_mask: Array) -> Array:
    """Position ids [B, T] int32 = cumsum(mask) - 1 clipped at 0 (left padding gets position 0)."""
    mask = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)


def _norm_and_rope(cfg: DecoderConfig, p: dict[str, Array], q: Array, k: Array,
                   positions: Array) -> tuple[Array, Array]:
    """Per-head q/k RMSNorm (qwen3) then RoPE; q [B,T,Hq,D], k [B,T,Hkv,D], positions [B,T]."""
    if cfg.qk_norm:
        q = rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
    inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    return apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)


def _project_qkv(cfg: DecoderConfig, p: dict[str, Array], x: Array, positions: Array):
    """q [B,T,Hq,D], k and v [B,T,Hkv,D] (q/k norm and RoPE applied) from normed input x [B*T,H].

    The projections run on token-flattened [B*T, H] activations (as do `_attn_out_and_mlp`'s):
    with 3-D [B, T, H] operands XLA's CPU backend transposes the [B, T, I] activation gradients
    into a strided copy before each weight-gradient matmul, which took a quarter of the update.
    """
    b, t = positions.shape
    q = x @ p["q_kernel"]
    k = x @ p["k_kernel"]
    v = x @ p["v_kernel"]
    if cfg.qkv_bias:
        q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
    q = q.reshape(b, t, cfg.num_attention_heads, cfg.head_dim)
    k = k.reshape(b, t, cfg.num_key_value_heads, cfg.head_dim)
    v = v.reshape(b, t, cfg.num_key_value_heads, cfg.head_dim)
    q, k = _norm_and_rope(cfg, p, q, k, positions)
    return q, k, v


def _attn_out_and_mlp(cfg: DecoderConfig, p: dict[str, Array], h: Array, attn: Array) -> Array:
    """Residual update after attention (o_proj) followed by the SwiGLU MLP block; h, attn [B*T, .]."""
    h = h + attn @ p["o_kernel"]
    x = rms_norm(h, p["post_norm"], cfg.rms_norm_eps)
    return h + (jax.nn.silu(x @ p["gate_kernel"]) * (x @ p["up_kernel"])) @ p["down_kernel"]


class DecoderStack(nnx.Module):
    """All L decoder layers, each parameter stacked on a leading layer axis.

    Shapes (L layers, H hidden, Hq/Hkv heads, D head_dim, I intermediate):
      input_norm, post_norm [L, H]; q_kernel [L, H, Hq*D]; k_kernel, v_kernel [L, H, Hkv*D];
      q_bias [L, Hq*D], k_bias, v_bias [L, Hkv*D] (only when `qkv_bias`); q_norm, k_norm [L, D]
      (only when `qk_norm`); o_kernel [L, Hq*D, H];
      gate_kernel, up_kernel [L, H, I]; down_kernel [L, I, H].
    """

    def __init__(self, cfg: DecoderConfig, *, param_dtype, rngs: nnx.Rngs):
        n, h, d, i = cfg.num_hidden_layers, cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
        qd, kvd = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
        normal = jax.nn.initializers.normal(_INIT_STD)

        def kernel(shape):
            return nnx.Param(normal(rngs.params(), (n, *shape), param_dtype))

        self.input_norm = nnx.Param(jnp.ones((n, h), param_dtype))
        self.q_kernel = kernel((h, qd))
        self.k_kernel = kernel((h, kvd))
        self.v_kernel = kernel((h, kvd))
        if cfg.qkv_bias:
            self.q_bias = nnx.Param(jnp.zeros((n, qd), param_dtype))
            self.k_bias = nnx.Param(jnp.zeros((n, kvd), param_dtype))
            self.v_bias = nnx.Param(jnp.zeros((n, kvd), param_dtype))
        if cfg.qk_norm:
            self.q_norm = nnx.Param(jnp.ones((n, d), param_dtype))
            self.k_norm = nnx.Param(jnp.ones((n, d), param_dtype))
        self.o_kernel = kernel((qd, h))
        self.post_norm = nnx.Param(jnp.ones((n, h), param_dtype))
        self.gate_kernel = kernel((h, i))
        self.up_kernel = kernel((h, i))
        self.down_kernel = kernel((i, h))

    def stacked(self, dtype) -> dict[str, Array]:
        """{name: [L, ...] array cast to `dtype`} for the parameters present."""
        return {name: getattr(self, name)[...].astype(dtype)
                for name in LAYER_PARAM_NAMES if hasattr(self, name)}

    def per_layer(self, dtype) -> tuple[dict[str, Array], ...]:
        """Layer l's parameters for step-by-step decoding: L dicts of arrays cast to `dtype`.

        Kernels are stored [out, in] (HF's layout; a projection is ``y = x @ W^T``):
        qkv [(Hq + 2 Hkv) D, H] (q, k and v rows stacked), qkv_bias [(Hq + 2 Hkv) D] (only when
        `qkv_bias`), o [H, Hq D], gate_up [2 I, H] (gate rows, then up rows), down [H, I];
        plus input_norm [H] and post_norm [H], and q_norm, k_norm [D] when `qk_norm`.

        Computed once outside the decoding loop (one copy of the layer weights): the static
        slices spare the loop a copy of every layer's weights per step (XLA materialises a slice
        that feeds a matmul, and a `scan` over the stacked layers slices them at every
        iteration); stacking q/k/v and gate/up turns seven small matmuls per layer into four; and
        XLA's CPU matmul (YNNPACK) multiplies a few rows of activations by an [out, in] weight
        faster than by an [in, out] one (up to 2x at 8 rows on a 2-core AMD EPYC).
        """
        p = self.stacked(dtype)
        t = lambda w: jnp.swapaxes(w, -1, -2)  # noqa: E731  [L, in, out] -> [L, out, in]
        fused = {"input_norm": p["input_norm"],
                 "qkv": t(jnp.concatenate([p["q_kernel"], p["k_kernel"], p["v_kernel"]], -1)),
                 "o": t(p["o_kernel"]), "post_norm": p["post_norm"],
                 "gate_up": t(jnp.concatenate([p["gate_kernel"], p["up_kernel"]], -1)),
                 "down": t(p["down_kernel"])}
        if "q_bias" in p:
            fused["qkv_bias"] = jnp.concatenate([p["q_bias"], p["k_bias"], p["v_bias"]], -1)
        if "q_norm" in p:
            fused["q_norm"], fused["k_norm"] = p["q_norm"], p["k_norm"]
        n = p["input_norm"].shape[0]
        return tuple({name: value[i] for name, value in fused.items()} for i in range(n))


def _linear_t(x: Array, w: Array) -> Array:
    """``x @ w^T`` for x [..., in] and a weight stored [out, in]; result [..., out] in x.dtype."""
    return jnp.einsum("...i,oi->...o", x, w)


class DecoderModel(nnx.Module):
    """The backbone (alias `Qwen2Model`): token embedding, L decoder layers, final RMSNorm.

    Args:
      config: architecture.
      param_dtype: storage dtype of the parameters (default fp32).
      compute_dtype: activation dtype (default: `param_dtype`); bf16 for mixed precision.
      remat: recompute each layer's activations in the backward pass (`jax.checkpoint`).
      scan_layers: run the layers under a `jax.lax.scan` (compile time independent of depth);
        False unrolls it (faster steps for shallow models on CPU, longer compiles for deep ones).
      rngs: initialisation randomness (weights N(0, 0.02), norms 1, biases 0).
    """

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32,
                 compute_dtype=None, remat: bool = False, scan_layers: bool = True):
        self.config = config
        self.param_dtype = jnp.dtype(param_dtype)
        self.compute_dtype = jnp.dtype(compute_dtype if compute_dtype is not None else param_dtype)
        self.remat = bool(remat)
        self.scan_layers = bool(scan_layers)
        self.embed = nnx.Param(jax.nn.initializers.normal(_INIT_STD)(
            rngs.params(), (config.vocab_size, config.hidden_size), self.param_dtype))
        self.layers = DecoderStack(config, param_dtype=self.param_dtype, rngs=rngs)
        self.final_norm = nnx.Param(jnp.ones((config.hidden_size,), self.param_dtype))

    def _scan_layers(self, body, carry, xs):
        if self.remat:
            body = jax.checkpoint(body, prevent_cse=False)
        return jax.lax.scan(body, carry, xs, unroll=not self.scan_layers)

    def __call__(self, tokens: Array, attention_mask: Array | None = None,
                 positions: Array | None = None, *, return_kv: bool = False):
        """Final hidden states after the last RMSNorm.

        Args:
          tokens: [B, T] int token ids.
          attention_mask: [B, T] (bool or 0/1), 1 on real tokens; default all ones.
          positions: [B, T] int position ids; default `positions_from_mask(attention_mask)`.
          return_kv: also return the post-RoPE keys and values of every layer (for a KV cache).
        Returns:
          hidden [B, T, H] in compute_dtype; with `return_kv`, (hidden, (k, v)) where k and v are
          [L, B, T, Hkv, D] in compute_dtype.
        """
        cfg, cdt = self.config, self.compute_dtype
        if attention_mask is None:
            attention_mask = jnp.ones(tokens.shape, jnp.int32)
        if positions is None:
            positions = positions_from_mask(attention_mask)
        t = tokens.shape[1]
        causal = jnp.tril(jnp.ones((t, t), jnp.bool_))
        mask = causal[None] & attention_mask.astype(jnp.bool_)[:, None, :]  # [B, T, T]
        b = tokens.shape[0]
        h = self.embed[...][tokens.reshape(-1)].astype(cdt)  # [B*T, H]: see `_project_qkv`

        def layer(h, p):
            x = rms_norm(h, p["input_norm"], cfg.rms_norm_eps)
            q, k, v = _project_qkv(cfg, p, x, positions)
            h = _attn_out_and_mlp(cfg, p, h, grouped_attention(q, k, v, mask).reshape(b * t, -1))
            return h, ((k, v) if return_kv else None)

        h, kv = self._scan_layers(layer, h, self.layers.stacked(cdt))
        h = rms_norm(h, self.final_norm[...], cfg.rms_norm_eps).reshape(b, t, -1)
        return (h, kv) if return_kv else h

    def decode(self, tokens: Array, positions: Array, keys: tuple[Array, ...],
               values: tuple[Array, ...], key_mask: Array, index: Array,
               layers: tuple[dict[str, Array], ...] | None = None):
        """One decoding step against a KV cache (see `kv_cache.decode_step` for the public API).

        Args:
          tokens: [B, 1] int; positions: [B, 1] int position ids of these tokens.
          keys, values: L per-layer caches, each [B, Hkv, S, D]; slot `index` is overwritten with
            this step's post-RoPE key / value.
          key_mask: [B, S] bool, valid cache slots *including* slot `index`.
          index: [] int32 cache slot of this step.
          layers: `self.layers.per_layer(compute_dtype)`, computed once outside a decoding loop
            (default: sliced here, which inside a loop copies every layer's weights per step).
        Returns:
          (hidden [B, 1, H] in compute_dtype, keys, values) with slot `index` written.

        The layers are unrolled into one straight-line program per step. Each layer's cache is a
        buffer of its own, so XLA writes the new row in place and `decode_attention` reads the
        buffer where it lies (with one stacked [L, ...] cache, XLA copies the whole cache at every
        layer of every step to keep the in-place update apart from the read of the layer).
        """
        cfg, cdt = self.config, self.compute_dtype
        if layers is None:
            layers = self.layers.per_layer(cdt)
        if not len(layers) == len(keys) == len(values) == cfg.num_hidden_layers:
            raise ValueError(f"decode needs {cfg.num_hidden_layers} layers of weights and caches, got "
                             f"{len(layers)} / {len(keys)} / {len(values)}")
        b = tokens.shape[0]
        mask = key_mask.astype(jnp.bool_)
        h = self.embed[...][tokens[:, 0]].astype(cdt)  # [B, H]
        zero = jnp.zeros((), jnp.int32)
        start = (zero, zero, jnp.asarray(index, jnp.int32), zero)
        hq, hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        inter = cfg.intermediate_size
        new_keys, new_values = [], []
        for p, ck, cv in zip(layers, keys, values):
            x = rms_norm(h, p["input_norm"], cfg.rms_norm_eps)
            qkv = _linear_t(x, p["qkv"])
            if "qkv_bias" in p:
                qkv = qkv + p["qkv_bias"]
            q = qkv[:, :hq * d].reshape(b, 1, hq, d)
            k = qkv[:, hq * d:(hq + hkv) * d].reshape(b, 1, hkv, d)
            v = qkv[:, (hq + hkv) * d:].reshape(b, hkv, 1, d)
            q, k = _norm_and_rope(cfg, p, q, k, positions)
            q, k = q[:, 0], k.reshape(b, hkv, 1, d)  # [B, Hq, D], [B, Hkv, 1, D]
            ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), start)
            cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), start)
            new_keys.append(ck)
            new_values.append(cv)
            h = h + _linear_t(decode_attention(q, ck, cv, mask), p["o"])
            x = rms_norm(h, p["post_norm"], cfg.rms_norm_eps)
            gate_up = _linear_t(x, p["gate_up"])
            mlp = _linear_t(jax.nn.silu(gate_up[:, :inter]) * gate_up[:, inter:], p["down"])
            h = h + mlp
        h = rms_norm(h, self.final_norm[...], cfg.rms_norm_eps)
        return h[:, None], tuple(new_keys), tuple(new_values)


class DecoderForCausalLM(nnx.Module):
    """The policy (alias `Qwen2ForCausalLM`): a `DecoderModel` plus a tied or separate LM head.

    `model(tokens, attention_mask=..., positions=...)` returns fp32 logits [B, T, V]. For training
    on a large vocabulary use `hidden_states(...)` with `unembed_weight()` and
    `sspo_jax.models.token_logprobs_and_entropy` so that [B, T, V] is never materialised.
    """

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32,
                 compute_dtype=None, remat: bool = False, scan_layers: bool = True):
        self.config = config
        self.model = DecoderModel(config, rngs=rngs, param_dtype=param_dtype,
                                compute_dtype=compute_dtype, remat=remat, scan_layers=scan_layers)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nnx.Param(jax.nn.initializers.normal(_INIT_STD)(
                rngs.params(), (config.vocab_size, config.hidden_size), self.model.param_dtype))

    @property
    def compute_dtype(self):
        """The activation dtype of the backbone (`DecoderModel.compute_dtype`)."""
        return self.model.compute_dtype

    def hidden_states(self, tokens: Array, attention_mask: Array | None = None,
                      positions: Array | None = None) -> Array:
        """Final hidden states [B, T, H] (compute dtype); arguments as in `DecoderModel.__call__`."""
        return self.model(tokens, attention_mask, positions)

    def unembed_weight(self) -> Array:
        """The LM head weight [V, H] in parameter dtype (the embedding when tied)."""
        return self.model.embed[...] if self.lm_head is None else self.lm_head[...]

    def logits_from_hidden(self, hidden: Array) -> Array:
        """fp32 logits [..., V] from hidden [..., H] (matmul in compute dtype, fp32 result)."""
        w = self.unembed_weight().astype(self.compute_dtype)
        return jnp.einsum("...h,vh->...v", hidden.astype(self.compute_dtype), w,
                          preferred_element_type=_F32)

    def __call__(self, tokens: Array, attention_mask: Array | None = None,
                 positions: Array | None = None) -> Array:
        """Logits [B, T, V] fp32; `logits[b, t]` scores token t + 1."""
        return self.logits_from_hidden(self.hidden_states(tokens, attention_mask, positions))

    def token_logprobs_and_entropy(self, tokens: Array, attention_mask: Array | None = None,
                                   positions: Array | None = None, *, chunk_size: int = 512,
                                   compute_entropy: bool = True):
        """Per-token log-probs and entropies [B, T] fp32 of the row's own tokens, chunked.

        `logp[b, t]` = log p(tokens[b, t] | tokens[b, :t]); column 0 is 0. See
        `sspo_jax.models.token_stats.token_logprobs_from_hidden`.
        """
        hidden = self.hidden_states(tokens, attention_mask, positions)
        return token_logprobs_from_hidden(hidden, self.unembed_weight().astype(self.compute_dtype),
                                          tokens, chunk_size=chunk_size,
                                          compute_entropy=compute_entropy)


Qwen2Model = DecoderModel  # historical names: every family builds through them
Qwen2ForCausalLM = DecoderForCausalLM
