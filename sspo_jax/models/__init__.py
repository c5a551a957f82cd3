"""Flax NNX decoders (Qwen2, Qwen3, Llama): policy, critics, KV-cache decoding, HF I/O, token stats.

Entry points:
  from_pretrained(path, *, dtype, compute_dtype, mesh, sharding_for, remat) -> DecoderForCausalLM
  save_pretrained(model, path, *, dtype, max_shard_bytes)
  read_stop_tokens(path) -> tuple[int, ...]                  # eos ids of a checkpoint directory
  token_logprobs_and_entropy(hidden, unembed, targets, *, chunk_size, compute_entropy)
  token_logprobs_from_hidden(hidden, unembed, tokens, ...)   # logp[b, t] = log p(tok_t | tok_<t)
  init_cache / prefill / decode_step                         # KV-cache decoding
  TokenValueModel / PromptCritic .from_policy_checkpoint(path, seed=...)

`Qwen2Config`, `Qwen2Model` and `Qwen2ForCausalLM` are the historical names of `DecoderConfig`,
`DecoderModel` and `DecoderForCausalLM`; `DecoderConfig.model_type` selects the family.
"""

from sspo_jax.models.config import (
    SUPPORTED_MODEL_TYPES,
    DecoderConfig,
    ModelError,
    Qwen2Config,
)
from sspo_jax.models.critics import PromptCritic, ScalarHead, TokenValueModel
from sspo_jax.models.decoder import (
    DecoderForCausalLM,
    DecoderModel,
    Qwen2ForCausalLM,
    Qwen2Model,
    positions_from_mask,
)
from sspo_jax.models.hf_io import CheckpointError, from_pretrained, load_into, save_pretrained
from sspo_jax.models.kv_cache import KVCache, decode_step, init_cache, prefill
from sspo_jax.models.rope import Llama3RopeScaling
from sspo_jax.models.stop_tokens import read_stop_tokens
from sspo_jax.models.token_stats import (
    naive_token_logprobs_and_entropy,
    token_logprobs_and_entropy,
    token_logprobs_from_hidden,
)

__all__ = [
    "SUPPORTED_MODEL_TYPES", "CheckpointError", "DecoderConfig", "DecoderForCausalLM",
    "DecoderModel", "KVCache", "Llama3RopeScaling", "ModelError", "PromptCritic", "Qwen2Config",
    "Qwen2ForCausalLM", "Qwen2Model", "ScalarHead", "TokenValueModel", "decode_step",
    "from_pretrained", "init_cache", "load_into", "naive_token_logprobs_and_entropy",
    "positions_from_mask", "prefill", "read_stop_tokens", "save_pretrained",
    "token_logprobs_and_entropy", "token_logprobs_from_hidden",
]
