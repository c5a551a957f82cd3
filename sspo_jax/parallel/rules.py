"""Sharding rules for the decoder policy and critics (Qwen2, Qwen3, Llama): FSDP over ``fsdp``,
heads and MLP hidden units over ``tensor`` (Megatron layout), everything else replicated.

Parameter paths are those of `nnx.split` (see `sspo_jax/models/decoder.py`): stacked layer weights
carry a leading layer axis that is never sharded. A dimension that the axis size does not divide
stays unsharded (e.g. 2 key/value heads on a tensor axis of 4), so every rule is always valid.
Optimizer state follows its parameters (`shard_like`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# path suffix -> logical spec per dimension (None = replicated); layer-stacked weights lead with None
_RULES: dict[str, tuple[Optional[str], ...]] = {
    "embed": ("tensor", "fsdp"),  # [V, H]: vocabulary over tensor, hidden over fsdp
    "lm_head": ("tensor", "fsdp"),  # [V, H]
    "final_norm": (None,),
    "input_norm": (None, None),  # [L, H]
    "post_norm": (None, None),
    "q_kernel": (None, "fsdp", "tensor"),  # [L, H, Hq*D]: column parallel
    "k_kernel": (None, "fsdp", "tensor"),
    "v_kernel": (None, "fsdp", "tensor"),
    "q_bias": (None, "tensor"),  # [L, Hq*D]
    "k_bias": (None, "tensor"),
    "v_bias": (None, "tensor"),
    "q_norm": (None, None),  # [L, D] (qwen3): one scale per head dimension, shared by all heads
    "k_norm": (None, None),
    "o_kernel": (None, "tensor", "fsdp"),  # [L, Hq*D, H]: row parallel
    "gate_kernel": (None, "fsdp", "tensor"),  # [L, H, I]
    "up_kernel": (None, "fsdp", "tensor"),
    "down_kernel": (None, "tensor", "fsdp"),  # [L, I, H]
    "kernel": (None,),  # value head [H]
    "bias": (),  # value head []
}


def _name(path: Sequence[Any]) -> str:
    """The parameter's own name: the last dict key or string of the path (nnx.State paths end in
    an attribute ``.value``, and optimizer-state paths wrap the parameter path)."""
    for part in reversed(tuple(path)):
        if isinstance(part, str):
            return part
        if hasattr(part, "key"):
            return str(part.key)
    return ""


def spec_for(path: Sequence[Any], shape: tuple[int, ...], mesh: Mesh) -> P:
    """The `PartitionSpec` of the parameter at `path` with `shape` on `mesh`."""
    name = _name(path)
    logical = _RULES.get(name)
    if logical is None or len(logical) != len(shape):
        return P(*([None] * len(shape)))
    out = []
    for dim, axis in zip(shape, logical):
        out.append(axis if axis is not None and dim % mesh.shape[axis] == 0 else None)
    return P(*out)


def sharding_for(mesh: Mesh):
    """The ``(path, shape) -> NamedSharding`` hook of `models.from_pretrained`: each weight is
    placed onto its shard as it is read from the checkpoint."""
    def fn(path, shape):
        return NamedSharding(mesh, spec_for(path, tuple(shape), mesh))
    return fn


def param_shardings(params: Any, mesh: Mesh) -> Any:
    """A pytree of `NamedSharding`s matching `params` (an `nnx.State` or any pytree of arrays)."""
    return jax.tree_util.tree_map_with_path(lambda p, x: NamedSharding(mesh, spec_for(p, x.shape, mesh)), params)


def shard_params(params: Any, mesh: Mesh) -> Any:
    """`params` placed on `mesh` by the rules."""
    return jax.device_put(params, param_shardings(params, mesh))


def shard_like(tree: Any, params: Any, mesh: Mesh) -> Any:
    """Places an optimizer state: leaves shaped like a parameter follow its sharding, others are
    replicated (Adam moments mirror the parameter tree; counts are scalars)."""
    shapes = {}
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        shapes.setdefault((_name(path), tuple(x.shape)), spec_for(path, x.shape, mesh))

    def place(path, x):
        if not hasattr(x, "shape"):
            return x
        spec = shapes.get((_name(path), tuple(x.shape)), P(*([None] * x.ndim)))
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map_with_path(place, tree)


def describe(params: Any) -> dict[str, str]:
    """``{path: spec}`` of placed parameters, for logs and tests."""
    out = {}
    for path, x in jax.tree_util.tree_leaves_with_path(nnx.State(params) if isinstance(params, dict) else params):
        key = "/".join(str(getattr(p, "key", p)) for p in path)
        out[key] = str(getattr(getattr(x, "sharding", None), "spec", None))
    return out
