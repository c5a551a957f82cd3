"""Sampling configuration for the rollout engine."""

from __future__ import annotations

import dataclasses
from typing import Optional

DEFAULT_PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


from sspo_jax.errors import ConfigError  # noqa: E402


class SamplingError(ConfigError):
    """An invalid sampling setting or an input that does not fit the configured buckets."""


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How responses are sampled (hashable: it is a static argument of the jitted sampler).

    Attributes:
      max_new_tokens: N, the response length budget; a row that has not emitted a stop token
        after N tokens is *truncated*.
      temperature: softmax temperature; 0 means greedy (argmax).
      top_k: keep only the k most likely tokens (0 = off).
      top_p: nucleus sampling, keep the smallest set of tokens whose probability reaches p (1 = off).
      eos_token_ids: stop tokens; the stop token is part of the response (and of its mask).
      pad_token_id: written after a row has stopped (never trained on: the mask is explicit).
      prompt_buckets: prompts are left-padded to the smallest bucket that fits, so calls with
        different prompt lengths reuse a few compiled programs.
      cache_dtype: ``float32`` or ``bfloat16`` storage of the KV cache.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    prompt_buckets: tuple[int, ...] = DEFAULT_PROMPT_BUCKETS
    cache_dtype: str = "float32"

    def __post_init__(self) -> None:
        if isinstance(self.eos_token_ids, int):
            object.__setattr__(self, "eos_token_ids", (self.eos_token_ids,))
        object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in self.eos_token_ids))
        object.__setattr__(self, "prompt_buckets", tuple(sorted(int(b) for b in self.prompt_buckets)))
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise SamplingError(f"sampling.max_new_tokens={self.max_new_tokens!r} must be an integer >= 1")
        if self.temperature < 0:
            raise SamplingError(f"sampling.temperature={self.temperature} must be >= 0 (0 = greedy)")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise SamplingError(f"sampling.top_k={self.top_k!r} must be an integer >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise SamplingError(f"sampling.top_p={self.top_p} must be in (0, 1] (1 = off)")
        if any(i < 0 for i in self.eos_token_ids) or self.pad_token_id < 0:
            raise SamplingError("sampling.eos_token_ids and pad_token_id must be non-negative token ids")
        if not self.prompt_buckets or self.prompt_buckets[0] < 1:
            raise SamplingError(f"sampling.prompt_buckets={self.prompt_buckets} must be positive lengths")
        if self.cache_dtype not in ("float32", "bfloat16"):
            raise SamplingError(f"sampling.cache_dtype={self.cache_dtype!r} must be 'float32' or 'bfloat16'")

    @property
    def greedy(self) -> bool:
        """Temperature 0: decode by argmax."""
        return self.temperature == 0

    def bucket_for(self, prompt_len: int) -> int:
        """The smallest prompt bucket >= `prompt_len`."""
        for b in self.prompt_buckets:
            if b >= prompt_len:
                return b
        raise SamplingError(
            f"prompt length {prompt_len} exceeds the largest prompt bucket {self.prompt_buckets[-1]}; "
            "add a larger bucket to sampling.prompt_buckets or lower data.max_prompt_len")

    def replace(self, **changes) -> "SamplingConfig":
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def validate_vocab(cfg: SamplingConfig, vocab_size: int, top_k: Optional[int] = None) -> None:
    """Checks token ids and top-k against the model's vocabulary."""
    bad = [i for i in (*cfg.eos_token_ids, cfg.pad_token_id) if i >= vocab_size]
    if bad:
        raise SamplingError(f"token ids {bad} in sampling.eos_token_ids/pad_token_id are >= the model's vocab_size {vocab_size}")
    if (top_k or cfg.top_k) > vocab_size:
        raise SamplingError(f"sampling.top_k={cfg.top_k} exceeds the vocabulary size {vocab_size}")
