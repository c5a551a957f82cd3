"""Qwen2 architecture configuration: a frozen dataclass read from a Hugging Face `config.json`.

`Qwen2Config` carries exactly the fields the Flax model needs (vocabulary, widths, heads, RoPE,
norm epsilon, tying, q/k/v bias) plus the token ids that an export must write back. It validates
every field on construction and names the offending key in its error messages. Reading a HF
config accepts both the transformers 5 layout (`rope_parameters: {"rope_theta": ...}`) and the
older top-level `rope_theta`; features that the Flax model does not implement (sliding-window
attention, RoPE scaling, activations other than SiLU, other model types) are refused with an
error rather than silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

SUPPORTED_MODEL_TYPES = ("qwen2",)


class ConfigError(ValueError):
    """A Hugging Face config cannot be read or describes a model this package does not support."""


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    """Architecture of a Qwen2 / Qwen2.5 decoder.

    Attributes:
      vocab_size: V, rows of the embedding (and of the LM head).
      hidden_size: H, width of the residual stream.
      num_hidden_layers: L, number of decoder layers.
      num_attention_heads: query heads.
      num_key_value_heads: key/value heads (grouped-query attention); divides the query heads.
      head_dim: width of one head (HF default hidden_size // num_attention_heads).
      intermediate_size: width of the SwiGLU MLP.
      rms_norm_eps: epsilon inside the RMS norms.
      rope_theta: RoPE base frequency.
      max_position_embeddings: largest position the model was trained for (informational; the
        model accepts larger positions, as transformers does).
      tie_word_embeddings: the LM head reuses the token embedding (no `lm_head.weight` tensor).
      qkv_bias: q/k/v projections carry a bias (always true for HF Qwen2).
      bos_token_id, eos_token_id, pad_token_id: copied through to exported configs.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    qkv_bias: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "intermediate_size", "max_position_embeddings"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"config key {key!r} must be a positive integer, got {value!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"config key 'hidden_size' ({self.hidden_size}) is not divisible by "
                    f"'num_attention_heads' ({self.num_attention_heads}); "
                    "set 'head_dim' explicitly")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        hd = self.head_dim
        if isinstance(hd, bool) or not isinstance(hd, int) or hd <= 0:
            raise ConfigError(f"config key 'head_dim' must be a positive integer, got {hd!r}")
        if self.head_dim % 2:
            raise ConfigError(f"config key 'head_dim' must be even for RoPE, got {self.head_dim}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"config key 'num_attention_heads' ({self.num_attention_heads}) must be a "
                f"multiple of 'num_key_value_heads' ({self.num_key_value_heads})")
        for key in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"config key {key!r} must be a positive number, got {value!r}")
            object.__setattr__(self, key, float(value))
        for key in ("tie_word_embeddings", "qkv_bias"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"config key {key!r} must be a bool, got {getattr(self, key)!r}")
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

    @property
    def num_query_groups(self) -> int:
        """Query heads per key/value head (1 = multi-head attention)."""
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "Qwen2Config":
        """Builds a config from the dict of a HF `config.json` (transformers 4 or 5 layout)."""
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"unsupported model_type {model_type!r}; sspo_jax.models supports "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}")
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                               "num_attention_heads", "intermediate_size") if k not in d]
        if missing:
            raise ConfigError(f"config.json lacks required key(s): {', '.join(missing)}")
        act = d.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ConfigError(f"unsupported config key 'hidden_act'={act!r}; "
                              "only 'silu' is implemented")
        if d.get("use_sliding_window", False):
            raise ConfigError("unsupported config key 'use_sliding_window'=true; sliding-window "
                              "attention is not implemented (set it to false)")
        rope = d.get("rope_parameters") or {}
        legacy_scaling = d.get("rope_scaling")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if legacy_scaling:
            rope_type = legacy_scaling.get("rope_type", legacy_scaling.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(f"unsupported RoPE type {rope_type!r}; "
                              "only 'default' RoPE is implemented")
        theta = rope.get("rope_theta", d.get("rope_theta", 10_000.0))
        kv_heads = d.get("num_key_value_heads") or d["num_attention_heads"]
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=kv_heads,
            intermediate_size=d["intermediate_size"],
            head_dim=d.get("head_dim"),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            max_position_embeddings=d.get("max_position_embeddings", 32768),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            qkv_bias=d.get("attention_bias", True),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
        )

    @classmethod
    def from_pretrained_dir(cls, path: str | os.PathLike) -> "Qwen2Config":
        """Reads `<path>/config.json`; errors name the file when it is missing or not JSON."""
        file = os.path.join(os.fspath(path), "config.json")
        try:
            with open(file, encoding="utf-8") as fh:
                d = json.load(fh)
        except FileNotFoundError:
            raise ConfigError(
                f"cannot read {file}: no such file (is {path} a HF model directory?)") from None
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read {file}: {e}") from e
        if not isinstance(d, dict):
            raise ConfigError(f"cannot read {file}: expected a JSON object")
        return cls.from_hf_dict(d)

    def to_hf_dict(self, dtype: str = "float32") -> dict[str, Any]:
        """The `config.json` dict for transformers' `Qwen2ForCausalLM` (both RoPE layouts)."""
        d: dict[str, Any] = {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_sliding_window": False,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "use_cache": True,
            "dtype": dtype,
            "torch_dtype": dtype,
        }
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, key)
            if value is not None:
                d[key] = list(value) if isinstance(value, tuple) else value
        return d
