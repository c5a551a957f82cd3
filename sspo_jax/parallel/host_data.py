"""Per-process rows of a global batch (multi-host data loading).

In a multi-process run every process reads the same global prompt batch (so the data cursor stays
identical everywhere and a checkpoint resumes on any process), keeps the rows that its own devices
hold under the mesh's batch sharding (rows split over ``data x fsdp``), samples, decodes and
scores those rows, and the global device arrays are assembled from every process's rows with
`jax.make_array_from_process_local_data`. With devices ordered by process (CPU and GPU meshes),
process i holds rows ``[i * N / P, (i + 1) * N / P)`` of an N-row batch.

In a single process every function here is the plain one-host equivalent (all rows are local).
"""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sspo_jax.errors import ConfigError
from sspo_jax.parallel.mesh import BATCH_AXES, batch_sharding


def multiprocess() -> bool:
    """True when the job spans several processes (`jax.distributed` initialised with N > 1)."""
    return jax.process_count() > 1


def rows_by_process(mesh: Mesh, n_rows: int) -> dict[int, np.ndarray]:
    """``{process index: int64 [n_local] sorted row indices}`` that each process's devices hold of
    an ``[n_rows, ...]`` array split over the mesh's (data, fsdp) axes."""
    sharding = NamedSharding(mesh, P(BATCH_AXES))
    owned: dict[int, set[int]] = {}
    for device, (idx,) in sharding.devices_indices_map((n_rows,)).items():
        owned.setdefault(device.process_index, set()).update(range(*idx.indices(n_rows)))
    return {p: np.array(sorted(rows), dtype=np.int64) for p, rows in sorted(owned.items())}


def process_rows(mesh: Mesh, n_rows: int) -> np.ndarray:
    """int64 [n_local]: the sorted rows of an N-row batch held by this process's devices."""
    return rows_by_process(mesh, n_rows)[jax.process_index()]


def check_row_split(mesh: Mesh, n_rows: int, group_size: int = 1) -> None:
    """Checks that an `n_rows` batch splits evenly over the mesh and, with several processes, that
    each process holds its own equally large set of whole groups of `group_size` rows.

    Raises:
      ConfigError: naming the sizes and what to change.
    """
    split = mesh.shape["data"] * mesh.shape["fsdp"]
    if n_rows % split:
        raise ConfigError(f"the batch of {n_rows} rows does not split over data x fsdp = {split} devices: make "
                          "data.batch_size * group_size a multiple of mesh.data * mesh.fsdp")
    owned = rows_by_process(mesh, n_rows)
    if len(owned) == 1:
        return
    sizes = {p: r.size for p, r in owned.items()}
    total = sum(sizes.values())
    if total != n_rows:  # some rows are held by several processes: the tensor axis spans hosts
        raise ConfigError(f"with {len(owned)} processes every process must hold its own rows, but mesh "
                          f"{dict(mesh.shape)} replicates rows across processes: keep mesh.tensor within one host "
                          f"(at most {jax.local_device_count()} devices) and split the batch with mesh.data / "
                          "mesh.fsdp")
    if len(set(sizes.values())) != 1:
        raise ConfigError(f"processes hold different numbers of rows {sizes}; use a mesh whose data x fsdp axes "
                          "split evenly over the processes")
    for p, rows in owned.items():
        groups = np.unique(rows // group_size)
        if rows.size % group_size or not np.array_equal(
                np.sort((groups[:, None] * group_size + np.arange(group_size)).ravel()), rows):
            raise ConfigError(f"process {p} would hold part of a group of {group_size} responses: make "
                              f"data.batch_size a multiple of the {len(owned)} processes (each process scores "
                              "whole groups)")


def place(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds in full (the same values
    everywhere); each process copies only the pieces its devices need."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def from_local_rows(local: np.ndarray, mesh: Mesh, n_rows: int) -> jax.Array:
    """The global ``[n_rows, ...]`` array split over (data, fsdp) from this process's rows
    (``local`` holds the rows of `process_rows`, in order; shape [n_local, ...], any dtype)."""
    local = np.asarray(local)
    sharding = batch_sharding(mesh, max(local.ndim, 1))
    if not multiprocess():
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local, (n_rows, *local.shape[1:]))


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a row-sharded global array, as numpy ``[n_local, ...]`` in row
    order (the whole array when this process holds all of it; scalars as they are)."""
    if not isinstance(x, jax.Array) or x.ndim == 0 or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    pieces: dict[int, np.ndarray] = {}
    for shard in x.addressable_shards:
        start = shard.index[0].indices(x.shape[0])[0] if shard.index else 0
        if start not in pieces:
            pieces[start] = np.asarray(shard.data)
    return np.concatenate([pieces[s] for s in sorted(pieces)], axis=0)


def gather(x: jax.Array | np.ndarray) -> np.ndarray:
    """The whole of a global array on every process, as numpy (np.asarray in a single process)."""
    if not multiprocess() or not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_local_rows(local: np.ndarray, mesh: Mesh | None, n_rows: int) -> np.ndarray:
    """The global ``[n_rows, ...]`` host array assembled from every process's rows (`local` in a
    single process)."""
    if mesh is None or not multiprocess():
        return np.asarray(local)
    return gather(from_local_rows(local, mesh, n_rows))


def per_process(values: np.ndarray) -> np.ndarray:
    """``[P, ...]``: the same-shaped host `values` of every process, stacked by process index."""
    values = np.asarray(values)
    if not multiprocess():
        return values[None]
    raw = np.ascontiguousarray(values).reshape(-1).view(np.uint8)  # bytes: float64/int64 survive without x64
    table = np.asarray(multihost_utils.process_allgather(raw, tiled=False))
    return np.stack([row.view(values.dtype).reshape(values.shape) for row in table])


def all_processes(flag: bool) -> bool:
    """True when `flag` is true in every process."""
    return bool(per_process(np.asarray(bool(flag))).all())


def reduce_metrics(metrics: Mapping[str, float], sum_suffixes: tuple[str, ...] = ()) -> dict[str, float]:
    """Host metrics of equally many rows per process made global: keys ending with one of
    `sum_suffixes` (counts) are summed over processes, the others (means) averaged. Every process
    must pass the same keys."""
    if not multiprocess():
        return dict(metrics)
    keys = sorted(metrics)
    table = per_process(np.array([float(metrics[k]) for k in keys], np.float64))
    return {k: float(table[:, i].sum() if k.endswith(sum_suffixes) else table[:, i].mean())
            for i, k in enumerate(keys)}
