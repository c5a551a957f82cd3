"""Shared helpers for the model tests: tiny configs (every family), padded batches, random Flax
checkpoints."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sspo_jax.models import Llama3RopeScaling, Qwen2Config, Qwen2ForCausalLM, save_pretrained

TINY = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rope_theta=10_000.0)


# Overrides that turn TINY into the other families: Qwen3 with a head_dim that is not
# hidden // heads (4 x 12 = 48 != 32), Llama with llama3 RoPE scaling whose short original context
# (16) remaps most of the 8 frequencies of a 16-wide head.
FAMILIES = {
    "qwen2": dict(),
    "qwen3": dict(model_type="qwen3", head_dim=12),
    "llama": dict(model_type="llama", rope_scaling=Llama3RopeScaling(
        factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16)),
}


def tiny_config(**overrides) -> Qwen2Config:
    return Qwen2Config(**{**TINY, **overrides})


def random_policy(seed: int = 0, **overrides) -> Qwen2ForCausalLM:
    """A randomly initialised tiny Flax policy with non-trivial biases and norm scales."""
    model = Qwen2ForCausalLM(tiny_config(**overrides), rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed + 1)
    layers = model.model.layers
    for name in ("q_bias", "k_bias", "v_bias", "input_norm", "post_norm", "q_norm", "k_norm"):
        if hasattr(layers, name):
            var = getattr(layers, name)
            base = 1.0 if name.endswith("norm") else 0.0
            var.set_value(jnp.asarray(base + 0.1 * rng.standard_normal(var.shape), jnp.float32))
    h = model.config.hidden_size
    model.model.final_norm.set_value(jnp.asarray(1 + 0.1 * rng.standard_normal(h), jnp.float32))
    return model


def write_checkpoint(path, seed: int = 0, **overrides) -> Qwen2ForCausalLM:
    model = random_policy(seed, **overrides)
    save_pretrained(model, path)
    return model


def padded_batch(rng: np.random.Generator, vocab: int, prompt_lens, resp_lens, prompt_width,
                 resp_width):
    """Rows of left-padded prompts then right-padded responses.

    Returns (tokens [B, P+R] int32, attention_mask [B, P+R] int32, prompt_mask [B, P+R] int32).
    Padding slots hold random tokens so that nothing may depend on their ids.
    """
    b = len(prompt_lens)
    t = prompt_width + resp_width
    tokens = rng.integers(0, vocab, (b, t)).astype(np.int32)
    mask = np.zeros((b, t), np.int32)
    prompt = np.zeros((b, t), np.int32)
    for i, (p, r) in enumerate(zip(prompt_lens, resp_lens)):
        mask[i, prompt_width - p:prompt_width + r] = 1
        prompt[i, prompt_width - p:prompt_width] = 1
    return tokens, mask, prompt


def positions_of(mask: np.ndarray) -> np.ndarray:
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)
