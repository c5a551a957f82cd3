"""Critics over the decoder backbone: a per-token value model (PPO) and a prompt critic (SPPO).

Both are a `DecoderModel` backbone of any family (Qwen2, Qwen3, Llama; parameters at `model/...`,
the same paths as the policy, so the policy's sharding rules apply) plus a `ScalarHead` Linear(H, 1) at `value_head/...`, with fp32
outputs. `from_policy_checkpoint` loads the backbone from a HF policy directory (its LM head is
ignored) and initialises a fresh head: kernel ~ N(0, head_init_std^2) from the given seed, bias 0.

Alignment of `TokenValueModel` follows the log-prob convention: `values[b, t]` is the value of
the state in which token t is generated, i.e. the head applied to hidden state t - 1 (the same
hidden state whose logits give `logp[b, t]`). Column 0 has no state and is 0; so is every t whose
token or predecessor is padding, so `values * response_mask` pairs directly with `logp`.

`PromptCritic` (SPPO) scores the prompt alone: the head is read at the last prompt token. Causal
attention and mask-derived positions make that output independent of every response token.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import nnx

from sspo_jax.models.config import DecoderConfig
from sspo_jax.models.decoder import DecoderModel

Array = jax.Array


class ScalarHead(nnx.Module):
    """Linear(H, 1): kernel [H] ~ N(0, init_std^2), bias [] = 0; fp32 output."""

    def __init__(self, hidden_size: int, *, rngs: nnx.Rngs, init_std: float = 1e-3,
                 param_dtype=jnp.float32):
        self.kernel = nnx.Param(init_std * jax.random.normal(rngs.params(), (hidden_size,),
                                                             param_dtype))
        self.bias = nnx.Param(jnp.zeros((), param_dtype))

    def __call__(self, hidden: Array) -> Array:
        """hidden [..., H] -> [...] fp32."""
        return (jnp.einsum("...h,h->...", hidden, self.kernel[...].astype(hidden.dtype),
                           preferred_element_type=jnp.float32)
                + self.bias[...].astype(jnp.float32))


class _Critic(nnx.Module):
    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32,
                 compute_dtype=None, remat: bool = False, head_init_std: float = 1e-3,
                 scan_layers: bool = True):
        self.config = config
        self.model = DecoderModel(config, rngs=rngs, param_dtype=param_dtype,
                                compute_dtype=compute_dtype, remat=remat, scan_layers=scan_layers)
        self.value_head = ScalarHead(config.hidden_size, rngs=rngs, init_std=head_init_std,
                                     param_dtype=param_dtype)

    @classmethod
    def from_policy_checkpoint(cls, path: str | os.PathLike, *, seed: int = 0,
                               dtype=jnp.float32, compute_dtype=None, mesh=None,
                               sharding_for=None, remat: bool = False,
                               head_init_std: float = 1e-3, scan_layers: bool = True):
        """Backbone from a HF Qwen2 / Qwen3 / Llama policy directory, fresh head from `seed`.

        Arguments as in `sspo_jax.models.from_pretrained`; `head_init_std` scales the head
        kernel. The checkpoint's `lm_head.weight`, if any, is ignored.
        """
        from sspo_jax.models import hf_io

        cfg = DecoderConfig.from_pretrained_dir(path)
        critic = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0), param_dtype=dtype,
                                            compute_dtype=compute_dtype, remat=remat,
                                            head_init_std=head_init_std, scan_layers=scan_layers))
        hf_io.load_into(critic, path, cfg, dtype=dtype, mesh=mesh, sharding_for=sharding_for,
                        need_lm_head=False)
        head = ScalarHead(cfg.hidden_size, rngs=nnx.Rngs(seed), init_std=head_init_std,
                          param_dtype=dtype)
        place = hf_io.resolve_sharding_fn(mesh, sharding_for)
        if place is not None:
            for name in ("kernel", "bias"):
                sharding = place(("value_head", name), tuple(getattr(head, name).shape))
                if sharding is not None:
                    var = getattr(head, name)
                    var.set_value(jax.device_put(var[...], sharding))
        critic.value_head = head
        return critic


class TokenValueModel(_Critic):
    """PPO value model: a scalar value per token position.

    Call: `values = critic(tokens, attention_mask, positions=None)`.
      tokens [B, T] int; attention_mask [B, T] (1 on real tokens); positions [B, T] optional.
      Returns values [B, T] fp32 with `values[b, t]` = head(hidden[b, t - 1]) where tokens t and
      t - 1 are both real, else 0 (column 0 is always 0).
    """

    def __call__(self, tokens: Array, attention_mask: Array | None = None,
                 positions: Array | None = None) -> Array:
        if attention_mask is None:
            attention_mask = jnp.ones(tokens.shape, jnp.int32)
        hidden = self.model(tokens, attention_mask, positions)
        raw = self.value_head(hidden[:, :-1])  # [B, T-1]: state after token t-1
        mask = attention_mask.astype(jnp.bool_)
        valid = mask[:, 1:] & mask[:, :-1]
        return jnp.pad(jnp.where(valid, raw, 0.0), ((0, 0), (1, 0)))


class PromptCritic(_Critic):
    """SPPO prompt critic: one scalar logit per row, read at the last prompt token.

    Call: `logit = critic(tokens, attention_mask, prompt_mask=... | last_prompt_index=...)`.
      tokens [B, T] int (prompt, optionally followed by the response); attention_mask [B, T].
      prompt_mask [B, T]: 1 on prompt tokens (the last 1 per row is read), or
      last_prompt_index [B] int: column of the last prompt token (P - 1 for left-padded
      prompts of width P). Exactly one of the two.
      Returns [B] fp32, independent of any token after the last prompt token.
    """

    def __call__(self, tokens: Array, attention_mask: Array | None = None, *,
                 prompt_mask: Array | None = None, last_prompt_index: Array | None = None,
                 positions: Array | None = None) -> Array:
        if (prompt_mask is None) == (last_prompt_index is None):
            raise ValueError("pass exactly one of prompt_mask and last_prompt_index")
        if attention_mask is None:
            attention_mask = jnp.ones(tokens.shape, jnp.int32)
        if last_prompt_index is None:
            cols = jnp.arange(tokens.shape[1])[None, :]
            last_prompt_index = jnp.max(jnp.where(prompt_mask.astype(jnp.bool_), cols, 0), axis=1)
        hidden = self.model(tokens, attention_mask, positions)
        h = jnp.take_along_axis(hidden, last_prompt_index.astype(jnp.int32)[:, None, None],
                                axis=1)[:, 0]
        return self.value_head(h)
