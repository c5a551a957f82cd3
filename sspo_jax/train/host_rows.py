"""Moving a process's host rows to the global device batch and back (one process or many).

In one process both directions are the identity up to `jnp.asarray`. With several processes each
holds the rows its devices own (see `sspo_jax.parallel.host_data`); `HostRows` hides the difference.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sspo_jax.parallel import from_local_rows, gather_local_rows


@dataclasses.dataclass(frozen=True)
class HostRows:
    """The row layout of a job.

    Attributes:
      mesh: the device mesh (None = one device).
      processes: the number of processes; the batch rows are split into this many equal parts.
    """

    mesh: Optional[Mesh] = None
    processes: int = 1

    def to_device(self, x: np.ndarray) -> jax.Array:
        """This process's rows [n, ...] as the global array [n * processes, ...]: split over the
        mesh's (data, fsdp) axes when there is a mesh, one device otherwise."""
        if self.mesh is None:
            return jnp.asarray(x)
        return from_local_rows(x, self.mesh, np.shape(x)[0] * self.processes)

    def gather(self, x: np.ndarray) -> np.ndarray:
        """Every process's rows of a per-process host array [n, ...] as one host array
        [n * processes, ...] in global row order (`x` itself in a single process)."""
        return gather_local_rows(x, self.mesh, np.shape(x)[0] * self.processes)
