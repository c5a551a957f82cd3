"""Decoder architecture configuration: a frozen dataclass read from a Hugging Face `config.json`.

`DecoderConfig` (alias `Qwen2Config`) describes the three supported families, which share one
decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU MLP, tied or untied LM head) and differ
by a few flags that `model_type` fixes:

  qwen2  q/k/v projections with bias (`qkv_bias`), default RoPE
  qwen3  per-head RMSNorm of q and k before RoPE (`qk_norm`), explicit `head_dim`, no bias
  llama  (Llama 3, SmolLM2) no bias, default or `llama3`-scaled RoPE (`rope_scaling`)

It carries exactly the fields the Flax model needs plus the token ids that an export must write
back, validates every field on construction and names the offending key in its error messages.
Reading a HF config accepts both the transformers 5 layout (`rope_parameters: {"rope_theta":
...}`) and the older top-level `rope_theta` / `rope_scaling`; features that the Flax model does
not implement (sliding-window attention, RoPE types other than default and llama3, activations
other than SiLU, biased Llama/Qwen3 projections, other model types) are refused with an error
rather than silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from sspo_jax.errors import ModelError
from sspo_jax.models.rope import Llama3RopeScaling, hf_rope_parameters, parse_hf_rope

# model_type -> (HF architecture, q/k/v bias, per-head q/k RMSNorm)
FAMILIES = {
    "qwen2": ("Qwen2ForCausalLM", True, False),
    "qwen3": ("Qwen3ForCausalLM", False, True),
    "llama": ("LlamaForCausalLM", False, False),
}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Architecture of a Qwen2 / Qwen2.5, Qwen3 or Llama (3.x, SmolLM2) decoder.

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
      qkv_bias: q/k/v projections carry a bias; default from the family (true for qwen2, and
        only qwen2 may have it; HF Qwen2 always has the tensors, a false one exports zeros).
      bos_token_id, eos_token_id, pad_token_id: copied through to exported configs.
      qk_norm: per-head RMSNorm (weights [head_dim]) of q and k before RoPE; fixed by the family
        (true exactly for qwen3), default from it.
      rope_scaling: `Llama3RopeScaling` or None (plain RoPE).
      model_type: "qwen2" (default), "qwen3" or "llama"; the HF family an export is written as.
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
    qkv_bias: bool | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    qk_norm: bool | None = None
    rope_scaling: Llama3RopeScaling | None = None
    model_type: str = "qwen2"

    def __post_init__(self):
        if self.model_type not in FAMILIES:
            raise ModelError(f"unsupported model_type {self.model_type!r}; sspo_jax.models "
                             f"supports {', '.join(SUPPORTED_MODEL_TYPES)}")
        _, family_bias, family_qk_norm = FAMILIES[self.model_type]
        if self.qkv_bias is None:
            object.__setattr__(self, "qkv_bias", family_bias)
        if self.qk_norm is None:
            object.__setattr__(self, "qk_norm", family_qk_norm)
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "intermediate_size", "max_position_embeddings"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelError(f"config key {key!r} must be a positive integer, got {value!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ModelError(
                    f"config key 'hidden_size' ({self.hidden_size}) is not divisible by "
                    f"'num_attention_heads' ({self.num_attention_heads}); "
                    "set 'head_dim' explicitly")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        hd = self.head_dim
        if isinstance(hd, bool) or not isinstance(hd, int) or hd <= 0:
            raise ModelError(f"config key 'head_dim' must be a positive integer, got {hd!r}")
        if self.head_dim % 2:
            raise ModelError(f"config key 'head_dim' must be even for RoPE, got {self.head_dim}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelError(
                f"config key 'num_attention_heads' ({self.num_attention_heads}) must be a "
                f"multiple of 'num_key_value_heads' ({self.num_key_value_heads})")
        for key in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ModelError(f"config key {key!r} must be a positive number, got {value!r}")
            object.__setattr__(self, key, float(value))
        for key in ("tie_word_embeddings", "qkv_bias", "qk_norm"):
            if not isinstance(getattr(self, key), bool):
                raise ModelError(f"config key {key!r} must be a bool, got {getattr(self, key)!r}")
        if self.qkv_bias and not family_bias:
            raise ModelError(f"config key 'qkv_bias' must be false for model_type "
                             f"{self.model_type!r} (only qwen2 has q/k/v biases)")
        if self.qk_norm != family_qk_norm:
            raise ModelError(f"config key 'qk_norm' must be {str(family_qk_norm).lower()} for "
                             f"model_type {self.model_type!r}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, Llama3RopeScaling):
            raise ModelError("config key 'rope_scaling' must be a Llama3RopeScaling or None, got "
                             f"{self.rope_scaling!r}")
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

    @property
    def num_query_groups(self) -> int:
        """Query heads per key/value head (1 = multi-head attention)."""
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "DecoderConfig":
        """Builds a config from the dict of a HF `config.json` (transformers 4 or 5 layout)."""
        model_type = d.get("model_type")
        if model_type not in FAMILIES:
            raise ModelError(
                f"unsupported model_type {model_type!r}; sspo_jax.models supports "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}")
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                               "num_attention_heads", "intermediate_size") if k not in d]
        if missing:
            raise ModelError(f"config.json lacks required key(s): {', '.join(missing)}")
        act = d.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ModelError(f"unsupported config key 'hidden_act'={act!r}; "
                              "only 'silu' is implemented")
        layer_types = d.get("layer_types") or []
        if d.get("use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
            raise ModelError("unsupported config key 'use_sliding_window'=true (or a non-full "
                             "'layer_types' entry); sliding-window attention is not implemented "
                             "(set it to false)")
        if model_type == "qwen2":
            qkv_bias = d.get("attention_bias", True)
        else:
            for key in ("attention_bias", "mlp_bias"):
                if d.get(key, False):
                    raise ModelError(f"unsupported config key {key!r}=true for model_type "
                                     f"{model_type!r}; biased projections are not implemented")
            qkv_bias = False
        theta, scaling = parse_hf_rope(d)
        kv_heads = d.get("num_key_value_heads") or d["num_attention_heads"]
        # transformers' Qwen3Config defaults head_dim to 128, not hidden_size // heads
        head_dim = d.get("head_dim", 128 if model_type == "qwen3" else None)
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=kv_heads,
            intermediate_size=d["intermediate_size"],
            head_dim=head_dim,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            max_position_embeddings=d.get("max_position_embeddings", 32768),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            qkv_bias=qkv_bias,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
            rope_scaling=scaling,
            model_type=model_type,
        )

    @classmethod
    def from_pretrained_dir(cls, path: str | os.PathLike) -> "DecoderConfig":
        """Reads `<path>/config.json`; errors name the file when it is missing or not JSON."""
        file = os.path.join(os.fspath(path), "config.json")
        try:
            with open(file, encoding="utf-8") as fh:
                d = json.load(fh)
        except FileNotFoundError:
            raise ModelError(
                f"cannot read {file}: no such file (is {path} a HF model directory?)") from None
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"cannot read {file}: {e}") from e
        if not isinstance(d, dict):
            raise ModelError(f"cannot read {file}: expected a JSON object")
        return cls.from_hf_dict(d)

    def to_hf_dict(self, dtype: str = "float32") -> dict[str, Any]:
        """The `config.json` dict for transformers' model of this family (both RoPE layouts)."""
        d: dict[str, Any] = {
            "architectures": [FAMILIES[self.model_type][0]],
            "model_type": self.model_type,
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
            "rope_parameters": hf_rope_parameters(self.rope_theta, self.rope_scaling),
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "use_cache": True,
            "dtype": dtype,
            "torch_dtype": dtype,
        }
        if self.model_type in ("qwen2", "qwen3"):
            d["use_sliding_window"] = False
        if self.model_type in ("qwen3", "llama"):
            d["attention_bias"] = False
        if self.model_type == "llama":
            d["mlp_bias"] = False
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, key)
            if value is not None:
                d[key] = list(value) if isinstance(value, tuple) else value
        return d


Qwen2Config = DecoderConfig  # the historical name; it builds any family via `model_type`
