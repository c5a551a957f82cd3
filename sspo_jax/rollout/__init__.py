"""Rollout engine: jitted batched generation with a KV cache, sampling controls, group sampling.

    from sspo_jax.rollout import SamplingConfig, generate
    out = generate(model, prompt_tokens, prompt_mask, SamplingConfig(max_new_tokens=64, eos_token_ids=(2,)),
                   jax.random.key(0), group_size=8)
    out.tokens, out.response_mask, out.sampler_logp, out.truncated
"""

from sspo_jax.rollout.config import DEFAULT_PROMPT_BUCKETS, SamplingConfig, SamplingError
from sspo_jax.rollout.generate import GenerationResult, generate, pad_to_bucket, trace_count
from sspo_jax.rollout.sampling import processed_logits, sample_token

__all__ = ["DEFAULT_PROMPT_BUCKETS", "GenerationResult", "SamplingConfig", "SamplingError", "generate",
           "pad_to_bucket", "processed_logits", "sample_token", "trace_count"]
