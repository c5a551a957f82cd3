"""Distribution: device meshes (data, fsdp, tensor), sharding rules for the Qwen2 parameters,
batch shardings, multi-process start-up and per-process batch rows. The jitted update and
generation functions take sharded inputs and XLA (GSPMD) partitions them; no pmap.

    initialize(cfg.distributed)         # multi-host jobs: once per process, before any JAX work
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    params = shard_params(params, mesh)
"""

from sspo_jax.parallel.distributed import (DistributedConfig, DistributedError, detect_launcher, initialize,
                                           is_main_process, resolve)
from sspo_jax.parallel.host_data import (check_row_split, from_local_rows, gather, gather_local_rows, local_rows,
                                         multiprocess, place, process_rows, rows_by_process)
from sspo_jax.parallel.mesh import AXES, BATCH_AXES, MeshConfig, batch_sharding, make_mesh, replicated
from sspo_jax.parallel.rules import describe, param_shardings, shard_like, shard_params, sharding_for, spec_for

__all__ = ["AXES", "BATCH_AXES", "DistributedConfig", "DistributedError", "MeshConfig", "batch_sharding",
           "check_row_split", "describe", "detect_launcher", "from_local_rows", "gather", "gather_local_rows",
           "initialize", "is_main_process", "local_rows", "make_mesh", "multiprocess", "param_shardings", "place",
           "process_rows", "replicated", "resolve", "rows_by_process", "shard_like", "shard_params", "sharding_for",
           "spec_for"]
