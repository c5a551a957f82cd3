"""Multi-process (multi-host) start-up: `DistributedConfig` and `initialize`.

A multi-host job runs the same command once per host (or once per GPU node); the processes find
each other through a coordinator (process 0) and then see one global set of devices, over which
the trainer builds its mesh. `initialize` must run before any JAX computation: the ``sspo-jax
train`` command calls it right after reading the config. A single-process run skips it.

Where the settings come from (one scheme, per field):

1. the config's ``distributed:`` section (`DistributedConfig`);
2. the environment variables ``SSPO_COORDINATOR_ADDRESS`` (``host:port`` of process 0),
   ``SSPO_NUM_PROCESSES``, ``SSPO_PROCESS_ID`` (0 .. N-1) and ``SSPO_LOCAL_DEVICE_IDS``
   (comma-separated, e.g. ``0,1,2,3``), set per process by a launcher script. A field given both
   in the config and in the environment must agree;
3. JAX's own cluster detection (Cloud TPU pod slices, SLURM, Open MPI, Kubernetes) for whatever is
   still unset, when a multi-process launcher is detected or ``enabled`` is true.

``enabled`` (or ``SSPO_DISTRIBUTED=1|0|auto``) decides whether to initialise: ``null``/``auto``
initialises when the coordinator, process count or process id is given anywhere (all three are then
required unless a launcher is detected), or when SLURM / Open MPI / a Cloud TPU pod on GKE with
more than one process is detected from its environment variables; ``true`` always initialises
(JAX detects what is unset: the setting for Cloud TPU VMs, whose pod layout JAX reads from the
metadata server); ``false`` never does. One process in total (``num_processes: 1``) is a plain
single-process run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Mapping, Optional

import jax

from sspo_jax.errors import ConfigError

log = logging.getLogger(__name__)

ENV_ENABLED = "SSPO_DISTRIBUTED"
ENV_COORDINATOR = "SSPO_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "SSPO_NUM_PROCESSES"
ENV_PROCESS_ID = "SSPO_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "SSPO_LOCAL_DEVICE_IDS"


class DistributedError(ConfigError):
    """Multi-process settings are incomplete or inconsistent, or initialisation failed."""


def _check_address(address: str, where: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"{where}={address!r} must be 'host:port' of process 0 (e.g. '10.0.0.1:1234')")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How the processes of a multi-host job find each other (see `sspo_jax.parallel.distributed`).

    Every field may be left unset; each unset one is read from its ``SSPO_*`` environment variable,
    then from JAX's cluster detection.

    Attributes:
      enabled: null (auto): initialise when any setting is given or a multi-process launcher
        (SLURM, Open MPI, Cloud TPU on GKE) is detected; true: always (JAX detects unset values,
        e.g. on Cloud TPU VMs); false: never (single process). Env: SSPO_DISTRIBUTED=1|0|auto.
      coordinator_address: ``host:port`` of process 0, reachable from every process. Env:
        SSPO_COORDINATOR_ADDRESS.
      num_processes: the number of processes in the job. Env: SSPO_NUM_PROCESSES.
      process_id: this process's index, 0 .. num_processes - 1 (process 0 writes logs). Env:
        SSPO_PROCESS_ID.
      local_device_ids: the local accelerators this process uses (default: all of the host's).
        Env: SSPO_LOCAL_DEVICE_IDS, comma-separated.
      initialization_timeout_s: seconds to wait for all processes to connect.
    """

    enabled: Optional[bool] = None
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    local_device_ids: Optional[tuple[int, ...]] = None
    initialization_timeout_s: int = 300

    def __post_init__(self) -> None:
        if self.coordinator_address is not None:
            _check_address(self.coordinator_address, "distributed.coordinator_address")
        if self.num_processes is not None and self.num_processes < 1:
            raise DistributedError(f"distributed.num_processes={self.num_processes} must be >= 1")
        if self.process_id is not None and self.process_id < 0:
            raise DistributedError(f"distributed.process_id={self.process_id} must be >= 0")
        if (self.num_processes is not None and self.process_id is not None
                and self.process_id >= self.num_processes):
            raise DistributedError(f"distributed.process_id={self.process_id} must be smaller than "
                                   f"distributed.num_processes={self.num_processes} (ids run 0 .. "
                                   f"{self.num_processes - 1})")
        if self.local_device_ids is not None:
            ids = tuple(self.local_device_ids)
            if not ids or any(i < 0 for i in ids) or len(set(ids)) != len(ids):
                raise DistributedError(f"distributed.local_device_ids={list(ids)} must be distinct non-negative "
                                       "device ids")
        if self.initialization_timeout_s < 1:
            raise DistributedError(f"distributed.initialization_timeout_s={self.initialization_timeout_s} "
                                   "must be >= 1")


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    """The resolved arguments of `jax.distributed.initialize` (None = left to JAX's detection).

    Attributes:
      coordinator_address, num_processes, process_id, local_device_ids: as in `DistributedConfig`.
      launcher: the detected launcher ("slurm", "openmpi", "tpu-gke") or None.
      timeout_s: the initialisation timeout in seconds.
    """

    coordinator_address: Optional[str]
    num_processes: Optional[int]
    process_id: Optional[int]
    local_device_ids: Optional[tuple[int, ...]]
    launcher: Optional[str]
    timeout_s: int


def _env_int(environ: Mapping[str, str], name: str) -> Optional[int]:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} must be an integer") from None


def _env_ids(environ: Mapping[str, str], name: str) -> Optional[tuple[int, ...]]:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return tuple(int(p) for p in raw.split(",") if p.strip())
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} must be comma-separated integers "
                               "(e.g. 0,1,2,3)") from None


def _env_enabled(environ: Mapping[str, str]) -> Optional[bool]:
    raw = environ.get(ENV_ENABLED, "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise DistributedError(f"environment variable {ENV_ENABLED}={raw!r} must be 1, 0 or auto")


def detect_launcher(environ: Mapping[str, str] | None = None) -> Optional[str]:
    """The multi-process launcher that started this process, from its environment variables alone
    (no network): "slurm" (srun with more than one task), "openmpi" (mpirun with more than one
    rank), "tpu-gke" (a Cloud TPU slice of several hosts on GKE), or None."""
    env = os.environ if environ is None else environ

    def more_than_one(name: str) -> bool:
        try:
            return int(env.get(name, "1")) > 1
        except ValueError:
            return False

    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if all(k in env for k in slurm) and more_than_one("SLURM_NTASKS"):
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and more_than_one("OMPI_COMM_WORLD_SIZE"):
        return "openmpi"
    hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_PROCESS_ADDRESSES") or ""
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        return "tpu-gke"
    return None


def resolve(cfg: Optional[DistributedConfig] = None,
            environ: Mapping[str, str] | None = None) -> Optional[DistributedSettings]:
    """What `initialize` would do: None for a single-process run, else the arguments of
    `jax.distributed.initialize` (unset ones are detected by JAX).

    Raises:
      DistributedError: settings that are incomplete (no launcher to fill them in), contradictory
        (config and environment differ) or out of range (process_id >= num_processes).
    """
    cfg = cfg or DistributedConfig()
    env = os.environ if environ is None else environ

    def pick(field: str, from_env):
        mine, theirs = getattr(cfg, field), from_env
        if mine is not None and theirs is not None and tuple(_as_tuple(mine)) != tuple(_as_tuple(theirs)):
            raise DistributedError(f"distributed.{field}={mine!r} in the config but the environment says "
                                   f"{theirs!r}: set it in one place")
        return mine if mine is not None else theirs

    enabled = cfg.enabled if cfg.enabled is not None else _env_enabled(env)
    if enabled is False:
        return None
    address = pick("coordinator_address", env.get(ENV_COORDINATOR, "").strip() or None)
    if address is not None and cfg.coordinator_address is None:
        _check_address(address, ENV_COORDINATOR)
    num = pick("num_processes", _env_int(env, ENV_NUM_PROCESSES))
    pid = pick("process_id", _env_int(env, ENV_PROCESS_ID))
    ids = pick("local_device_ids", _env_ids(env, ENV_LOCAL_DEVICE_IDS))
    try:  # the same range checks as the config, for values that came from the environment
        DistributedConfig(num_processes=num, process_id=pid, local_device_ids=ids)
    except DistributedError as err:
        raise DistributedError(f"{err} (after reading the SSPO_* environment variables)") from None
    if num == 1:
        return None  # one process in total: nothing to coordinate
    launcher = detect_launcher(env)
    given = {"coordinator_address": address, "num_processes": num, "process_id": pid}
    if enabled is None and launcher is None and all(v is None for v in given.values()):
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing and launcher is None and enabled is not True:
        names = {"coordinator_address": ENV_COORDINATOR, "num_processes": ENV_NUM_PROCESSES,
                 "process_id": ENV_PROCESS_ID}
        have = ", ".join(f"{k}={v!r}" for k, v in given.items() if v is not None)
        raise DistributedError(
            f"incomplete multi-process settings ({have}): also set "
            + ", ".join(f"distributed.{k} (or {names[k]})" for k in missing)
            + "; every process needs the coordinator address, the process count and its own id")
    return DistributedSettings(coordinator_address=address, num_processes=num, process_id=pid,
                               local_device_ids=ids, launcher=launcher, timeout_s=cfg.initialization_timeout_s)


def _as_tuple(x):
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


def initialize(cfg: Optional[DistributedConfig] = None, environ: Mapping[str, str] | None = None) -> bool:
    """Starts JAX's distributed runtime when the settings ask for several processes.

    Call it once per process before any JAX computation (creating an array counts). Calling it
    again, or after JAX was initialised for several processes by other code, does nothing.

    Returns:
      True when this is a multi-process run (now initialised), False for a single process.
    Raises:
      DistributedError: bad settings (see `resolve`), JAX already started its backend in this
        process, or the processes could not connect.
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    settings = resolve(cfg, environ)
    if settings is None:
        return False
    try:
        jax.distributed.initialize(
            coordinator_address=settings.coordinator_address, num_processes=settings.num_processes,
            process_id=settings.process_id,
            local_device_ids=list(settings.local_device_ids) if settings.local_device_ids is not None else None,
            initialization_timeout=settings.timeout_s)
    except RuntimeError as err:
        text = " ".join(str(err).split())
        if "before" in text and "computation" in text:
            raise DistributedError("multi-process initialisation must happen before any JAX computation: call "
                                   "sspo_jax.parallel.initialize(cfg.distributed) first thing in the program "
                                   f"({text})") from None
        raise DistributedError(f"cannot start the multi-process runtime: {text[:400]}") from None
    except ValueError as err:  # JAX could not detect what was left unset
        raise DistributedError(
            f"cannot start the multi-process runtime ({err}): no cluster was detected, so set "
            f"distributed.coordinator_address, num_processes and process_id (or {ENV_COORDINATOR}, "
            f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID})") from None
    log.info("process %d of %d: %d local of %d devices (coordinator %s%s)", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count(), settings.coordinator_address or "detected",
             f", launcher {settings.launcher}" if settings.launcher else "")
    return jax.process_count() > 1


def is_main_process() -> bool:
    """True in process 0 (the one that writes logs, metrics and exports), and in a single process."""
    return jax.process_index() == 0
