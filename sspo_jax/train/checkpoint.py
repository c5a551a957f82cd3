"""Orbax checkpoints of the train state plus JSON metadata (data cursor, config, history).

Layout: ``RUN_DIR/checkpoints/<step>/{state, meta}``. Orbax writes each checkpoint to a temporary
directory and renames it when complete, so a crash mid-save leaves the previous checkpoints
intact. `restore_latest` restores into an explicit abstract target (shapes, dtypes and, when
present, shardings of the current state) and falls back to the previous checkpoint, with a
warning naming both, when the latest one cannot be read.

Orbax does not checksum array data, so a checkpoint whose bytes were damaged after the write
(disk or copy errors) would restore silently with wrong values. `save` therefore stores a
fingerprint of every state leaf (a position-weighted uint32 sum of its bits, computed on device)
in the metadata, and `restore` recomputes it and refuses a checkpoint that does not match.

After a fallback the run trains the skipped steps again; `save` then moves the unreadable
checkpoint of the same step aside (to ``RUN_DIR/checkpoints_unreadable/``, never deleting it)
before writing the new one.

Multi-host: every process calls `save` and `restore` (Orbax writes each process's array shards and
coordinates the commit itself; its JSON metadata is written by process 0). The one file operation
outside Orbax, moving an unreadable checkpoint aside, runs in process 0 and the others wait for it.
The run directory must be on storage that every process sees (a shared file system or a bucket).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from sspo_jax.errors import CheckpointError, ConfigError, TrainingError

log = logging.getLogger(__name__)

FINGERPRINT_KEY = "state_fingerprint"


class CheckpointCorruptError(CheckpointError):
    """A checkpoint's restored state does not match the fingerprint saved with it."""


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
    """uint32 sum over elements of (bits ^ golden * i) * (2i + 1): any single changed element changes it."""
    x = jnp.ravel(jnp.asarray(x))
    if x.dtype == jnp.bool_:
        bits = x.astype(jnp.uint32)
    elif x.dtype.itemsize > 4:  # 64-bit leaves (jax_enable_x64): two uint32 words per element
        bits = jnp.ravel(jax.lax.bitcast_convert_type(x, jnp.uint32))
    else:
        width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
        bits = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)
    idx = jnp.arange(bits.size, dtype=jnp.uint32)
    return jnp.sum((bits ^ (idx * jnp.uint32(0x9E3779B9))) * (idx * jnp.uint32(2) + jnp.uint32(1)),
                   dtype=jnp.uint32)


_jit_leaf_fingerprint = jax.jit(_leaf_fingerprint)


def state_fingerprint(state: Any) -> list[int]:
    """One uint32 per leaf of `state` (in `jax.tree.leaves` order), as plain ints.

    Leaves are fingerprinted one by one, on the devices that hold them: a sharded parameter and
    a scalar on one device cannot share a jitted computation. Each leaf's sum is awaited before
    the next is started: many independent programs in flight at once deadlocked the CPU (gloo)
    runtime across processes, and aborted an 8-device single-process CPU run under load. A
    checkpoint's few hundred leaves cost a few milliseconds this way.
    """
    leaves = jax.tree.leaves(state)
    jax.block_until_ready(leaves)
    return [int(jax.device_get(_jit_leaf_fingerprint(x))) for x in leaves]


def _short(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def _abstract(tree):
    def leaf(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    return jax.tree.map(leaf, tree)


class Checkpointer:
    """Saves and restores ``(state, meta)`` pairs under `directory`, keeping the last `keep`."""

    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        self.directory = Path(directory).absolute()
        # Several processes: synchronous saves (`save` waits anyway). Orbax's multi-process barriers
        # are device collectives, and an asynchronous save runs some of them on a background thread,
        # interleaved with the main thread's collectives in a different order on each process.
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=jax.process_count() == 1))

    def steps(self) -> list[int]:
        """The steps of the checkpoints on disk, ascending (re-read from the directory)."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves synchronously (returns when the checkpoint is complete on disk).

        A checkpoint of the same step already on disk (one that was unreadable on resume, so that
        its step is trained again) is first moved aside, with a warning naming where it went.
        """
        if step in self.steps():
            self._move_aside(step)
        meta = {**meta, FINGERPRINT_KEY: state_fingerprint(state)}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def _move_aside(self, step: int) -> None:
        aside = self.directory.with_name(self.directory.name + "_unreadable")
        dest = aside / str(step)
        if dest.exists():
            dest = aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            aside.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.directory / str(step)), str(dest))
        if jax.process_count() > 1:  # nobody writes the step again before it has been moved
            multihost_utils.sync_global_devices(f"sspo_jax_checkpoint_move_aside_{step}")
        log.warning("checkpoint %s/%d is being written again; the existing one (unreadable on resume) was moved "
                    "to %s", self.directory, step, dest)
        self.manager.reload()

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of `step` alone (cheap: no arrays are read)."""
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def restore(self, step: int, template: Any) -> tuple[Any, dict[str, Any]]:
        """The state and metadata of `step`; `CheckpointCorruptError` when the data does not match
        the fingerprint saved with it (checkpoints written before fingerprints are not checked)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(template)), meta=ocp.args.JsonRestore()))
        meta = dict(restored.meta)
        saved = meta.pop(FINGERPRINT_KEY, None)
        if saved is not None:
            here = state_fingerprint(restored.state)
            if list(saved) != here:
                paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(restored.state)]
                bad = [p for p, a, b in zip(paths, saved, here) if a != b] or ["(number of arrays)"]
                raise CheckpointCorruptError(
                    f"checkpoint {self.directory}/{step} is corrupt: the data of {len(bad)} array(s) "
                    f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}) differs from what was saved")
        return restored.state, meta

    def restore_latest(self, template: Any, *, check_meta=None) -> Optional[tuple[int, Any, dict[str, Any]]]:
        """The newest readable checkpoint as ``(step, state, meta)``, or None when there is none.

        `check_meta(meta)` may raise to refuse a checkpoint (e.g. of a different model); that
        error propagates. Unreadable or corrupt checkpoints are skipped with a warning naming them,
        and the one restored instead is named in a second warning.
        """
        skipped: list[int] = []
        for step in reversed(self.steps()):
            try:
                meta = self.read_meta(step)
                if check_meta is not None:
                    check_meta(meta)
                state, meta = self.restore(step, template)
            except ConfigError:
                raise
            except Exception as err:  # noqa: BLE001 - any read failure means "corrupt": try the previous one
                log.warning("checkpoint %s/%d is unreadable or corrupt (%s); falling back to the previous one",
                            self.directory, step, _short(err))
                skipped.append(step)
                continue
            if skipped:
                log.warning("restored checkpoint %s/%d instead of the unreadable newer checkpoint(s) %s",
                            self.directory, step, skipped)
            return step, state, meta
        return None

    def save_or_explain(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """`save`, with any failure (disk full, lost mount, permissions) turned into a `TrainingError`
        that says how to recover: the previous checkpoints are intact and training resumes from them."""
        try:
            self.save(step, state, meta)
        except Exception as err:  # noqa: BLE001 - stop with a clear error
            msg = " ".join(str(err).split())
            full = "No space left on device" in msg or "os_error_code='28'" in msg
            msg = "the disk is full: No space left on device" if full else msg[:400]
            raise TrainingError(f"cannot write the checkpoint of step {step} to {self.directory} ({msg}); free disk "
                                "space (or fix the directory) and run the same command again: training resumes "
                                "from the newest complete checkpoint") from err

    def close(self) -> None:
        """Waits for pending work and releases Orbax's resources."""
        self.manager.close()
