"""Rotary position embeddings: inverse frequencies (default and Llama 3 scaling) and their use.

`rope_inv_freq` computes the D/2 inverse frequencies of a head of width D once, on the host, in
fp32 and in the same order of operations as transformers (so that long positions rotate by the
same angles). `Llama3RopeScaling` is the `rope_type: "llama3"` remapping of Llama 3.1+/SmolLM
checkpoints: wavelengths shorter than ``original_max_position_embeddings / high_freq_factor``
keep their frequency, those longer than ``original_max_position_embeddings / low_freq_factor``
are divided by ``factor``, and the band in between is interpolated smoothly. Its attention factor
is 1, so cos/sin are not rescaled.

`parse_hf_rope` reads RoPE settings from a HF `config.json` dict in either layout
(transformers 5 `rope_parameters`, or the older top-level `rope_theta` plus `rope_scaling`) and
refuses RoPE types that are not implemented; `hf_rope_parameters` writes them back.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sspo_jax.errors import ModelError

Array = jax.Array
SUPPORTED_ROPE_TYPES = ("default", "llama3")


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """The `llama3` RoPE frequency remapping (all fields as in HF `rope_parameters`).

    Attributes:
      factor: divisor of the low frequencies (8 for Llama 3.1, 32 for Llama 3.2).
      low_freq_factor: ``original_max_position_embeddings / low_freq_factor`` is the wavelength
        above which frequencies are divided by `factor`.
      high_freq_factor: ``original_max_position_embeddings / high_freq_factor`` is the wavelength
        below which frequencies are kept; must exceed `low_freq_factor`.
      original_max_position_embeddings: context length of pre-training.
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self):
        for key in ("factor", "low_freq_factor", "high_freq_factor"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ModelError(f"config key 'rope_parameters.{key}' must be a positive number, "
                                 f"got {value!r}")
            object.__setattr__(self, key, float(value))
        omp = self.original_max_position_embeddings
        if isinstance(omp, bool) or not isinstance(omp, int) or omp <= 0:
            raise ModelError("config key 'rope_parameters.original_max_position_embeddings' must "
                             f"be a positive integer, got {omp!r}")
        if not self.high_freq_factor > self.low_freq_factor:
            raise ModelError(f"config key 'rope_parameters.high_freq_factor' "
                             f"({self.high_freq_factor}) must exceed 'low_freq_factor' "
                             f"({self.low_freq_factor})")


def rope_inv_freq(head_dim: int, theta: float,
                  scaling: Llama3RopeScaling | None = None) -> np.ndarray:
    """Inverse frequencies [head_dim / 2] fp32 (NumPy, host) of RoPE with base `theta`.

    Without `scaling`: ``inv[i] = 1 / theta ** (2 i / head_dim)``. With `Llama3RopeScaling`, the
    llama3 remapping described in the module docstring, computed in fp32 like transformers.
    """
    f32 = np.float32
    inv = f32(1.0) / (f32(theta) ** (np.arange(0, head_dim, 2, dtype=f32) / f32(head_dim)))
    if scaling is None:
        return inv.astype(f32)
    old = scaling.original_max_position_embeddings
    low_wavelen = old / scaling.low_freq_factor
    high_wavelen = old / scaling.high_freq_factor
    wavelen = f32(2 * math.pi) / inv
    scaled = np.where(wavelen > f32(low_wavelen), inv / f32(scaling.factor), inv).astype(f32)
    smooth = ((f32(old) / wavelen - f32(scaling.low_freq_factor))
              / f32(scaling.high_freq_factor - scaling.low_freq_factor))
    smoothed = (f32(1) - smooth) * scaled / f32(scaling.factor) + smooth * scaled
    medium = ~(wavelen < f32(high_wavelen)) & ~(wavelen > f32(low_wavelen))
    return np.where(medium, smoothed, scaled).astype(f32)


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray | Array) -> Array:
    """Rotary embedding, HF 'rotate half' layout.

    Args:
      x: [B, T, N, D] queries or keys (any float dtype).
      positions: [B, T] int position ids.
      inv_freq: [D / 2] fp32 inverse frequencies (`rope_inv_freq`).
    Returns:
      [B, T, N, D] in x.dtype; angles, cos/sin and the rotation are fp32.
    """
    d = x.shape[-1]
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, D]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x32 = x.astype(jnp.float32)
    half = d // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def parse_hf_rope(d: dict[str, Any]) -> tuple[float, Llama3RopeScaling | None]:
    """(rope_theta, scaling or None) from a HF config dict; ModelError for other RoPE types.

    Reads `rope_parameters` (transformers 5) or the legacy `rope_scaling` (which wins, as in
    transformers) and the top-level `rope_theta` (default 10000). A llama3 dict without
    `original_max_position_embeddings` falls back to `max_position_embeddings`, as in
    transformers.
    """
    params = d.get("rope_parameters") or {}
    legacy = d.get("rope_scaling")
    if legacy:
        params = {**params, **legacy}
    if not isinstance(params, dict):
        raise ModelError(f"config key 'rope_parameters' must be a JSON object, got {params!r}")
    if any(isinstance(v, dict) for v in params.values()):
        raise ModelError("unsupported per-layer-type 'rope_parameters'; only one RoPE setting "
                         "for all layers is implemented")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ModelError(f"unsupported RoPE type {rope_type!r}; implemented: "
                         f"{', '.join(SUPPORTED_ROPE_TYPES)}")
    if params.get("partial_rotary_factor", d.get("partial_rotary_factor")) not in (None, 1, 1.0):
        raise ModelError("unsupported config key 'partial_rotary_factor' != 1; partial RoPE is "
                         "not implemented")
    theta = params.get("rope_theta", d.get("rope_theta", 10_000.0))
    if rope_type == "default":
        return theta, None
    missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor") if k not in params]
    if missing:
        raise ModelError(f"llama3 RoPE lacks key(s) in 'rope_parameters': {', '.join(missing)}")
    scaling = Llama3RopeScaling(
        factor=params["factor"], low_freq_factor=params["low_freq_factor"],
        high_freq_factor=params["high_freq_factor"],
        original_max_position_embeddings=params.get(
            "original_max_position_embeddings", d.get("max_position_embeddings", 2048)))
    return theta, scaling


def hf_rope_parameters(theta: float, scaling: Llama3RopeScaling | None) -> dict[str, Any]:
    """The transformers 5 `rope_parameters` dict for `theta` and `scaling`."""
    if scaling is None:
        return {"rope_type": "default", "rope_theta": theta}
    return {"rope_type": "llama3", "rope_theta": theta, "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_max_position_embeddings}
