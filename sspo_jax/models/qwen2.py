"""The historical module of the Flax Qwen2 model; the decoder now lives in `decoder.py`.

Kept so that ``from sspo_jax.models.qwen2 import Qwen2ForCausalLM`` goes on working; every name
here is the one of `sspo_jax.models.decoder`, which builds the Qwen2, Qwen3 and Llama families.
"""

from sspo_jax.models.decoder import (  # noqa: F401 - re-exports
    LAYER_PARAM_NAMES,
    DecoderForCausalLM,
    DecoderModel,
    DecoderStack,
    Qwen2ForCausalLM,
    Qwen2Model,
    apply_rope,
    decode_attention,
    grouped_attention,
    positions_from_mask,
    rms_norm,
)
