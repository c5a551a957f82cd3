"""Device meshes with the named axes ``data``, ``fsdp`` and ``tensor``.

`MeshConfig` gives each axis a size; one size may be -1 to take the devices that are left. The
mesh is built with Auto axis types (`jax.make_mesh` defaults to Explicit in current JAX), so
jitted functions propagate shardings from their inputs and `with_sharding_constraint` hints.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from sspo_jax.errors import ConfigError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes; their product must equal the number of devices used.

    Attributes:
      data: pure data parallelism (parameters replicated along it). None (the default) takes the
        remaining devices, or 1 when another axis is -1.
      fsdp: data parallelism with parameters and optimizer state sharded along it (ZeRO-3 style).
      tensor: attention heads and MLP hidden units split along it (Megatron style).
    One of the three may be -1: it takes all remaining devices.
    """

    data: Optional[int] = None
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self) -> None:
        if self.data is None:
            object.__setattr__(self, "data", 1 if -1 in (self.fsdp, self.tensor) else -1)
        sizes = (self.data, self.fsdp, self.tensor)
        if sum(s == -1 for s in sizes) > 1:
            raise ConfigError(f"mesh: at most one axis size may be -1, got data={self.data}, fsdp={self.fsdp}, "
                              f"tensor={self.tensor}")
        for name, s in zip(AXES, sizes):
            if s != -1 and (not isinstance(s, int) or s < 1):
                raise ConfigError(f"mesh.{name}={s!r} must be a positive integer or -1")

    def resolve(self, n_devices: int) -> tuple[int, int, int]:
        """The three axis sizes for `n_devices` devices (the -1 axis filled in)."""
        sizes = [self.data, self.fsdp, self.tensor]
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if n_devices % known:
                raise ConfigError(f"mesh: {n_devices} devices cannot be split with fixed axes of product {known} "
                                  f"(data={self.data}, fsdp={self.fsdp}, tensor={self.tensor})")
            sizes[sizes.index(-1)] = n_devices // known
        elif known != n_devices:
            raise ConfigError(f"mesh: data * fsdp * tensor = {self.data} * {self.fsdp} * {self.tensor} = {known} "
                              f"but {n_devices} devices are in use; make the product equal the device count "
                              "or set one axis to -1")
        return tuple(sizes)  # type: ignore[return-value]


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A `Mesh` over `devices` (default: all) with axes (data, fsdp, tensor), Auto axis types."""
    devices = list(jax.devices() if devices is None else devices)
    shape = cfg.resolve(len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Rows split over (data, fsdp); every other dimension replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every dimension whole on every device of `mesh` (scalars, PRNG keys, small tables)."""
    return NamedSharding(mesh, P())
