"""Distribution: device meshes (data, fsdp, tensor), sharding rules for the Qwen2 parameters,
batch shardings. The jitted update and generation functions take sharded inputs and XLA (GSPMD)
partitions them; no pmap.

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    params = shard_params(params, mesh)
"""

from sspo_jax.parallel.mesh import AXES, BATCH_AXES, MeshConfig, batch_sharding, make_mesh, replicated
from sspo_jax.parallel.rules import describe, param_shardings, shard_like, shard_params, sharding_for, spec_for

__all__ = ["AXES", "BATCH_AXES", "MeshConfig", "batch_sharding", "describe", "make_mesh", "param_shardings",
           "replicated", "shard_like", "shard_params", "sharding_for", "spec_for"]
