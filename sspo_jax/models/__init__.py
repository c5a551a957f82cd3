"""Flax NNX Qwen2 models: policy, critics, KV-cache decoding, HF checkpoint I/O, token stats.

Entry points:
  from_pretrained(path, *, dtype, compute_dtype, mesh, sharding_for, remat) -> Qwen2ForCausalLM
  save_pretrained(model, path, *, dtype, max_shard_bytes)
  token_logprobs_and_entropy(hidden, unembed, targets, *, chunk_size, compute_entropy)
  token_logprobs_from_hidden(hidden, unembed, tokens, ...)   # logp[b, t] = log p(tok_t | tok_<t)
  init_cache / prefill / decode_step                         # KV-cache decoding
  TokenValueModel / PromptCritic .from_policy_checkpoint(path, seed=...)
"""

from sspo_jax.models.config import ConfigError, Qwen2Config
from sspo_jax.models.critics import PromptCritic, ScalarHead, TokenValueModel
from sspo_jax.models.hf_io import CheckpointError, from_pretrained, load_into, save_pretrained
from sspo_jax.models.kv_cache import KVCache, decode_step, init_cache, prefill
from sspo_jax.models.qwen2 import Qwen2ForCausalLM, Qwen2Model, positions_from_mask
from sspo_jax.models.token_stats import (
    naive_token_logprobs_and_entropy,
    token_logprobs_and_entropy,
    token_logprobs_from_hidden,
)

__all__ = [
    "CheckpointError", "ConfigError", "KVCache", "PromptCritic", "Qwen2Config",
    "Qwen2ForCausalLM", "Qwen2Model", "ScalarHead", "TokenValueModel", "decode_step",
    "from_pretrained", "init_cache", "load_into", "naive_token_logprobs_and_entropy",
    "positions_from_mask", "prefill", "save_pretrained", "token_logprobs_and_entropy",
    "token_logprobs_from_hidden",
]
