"""Orbax checkpoints of the train state plus JSON metadata (data cursor, config, history).

Layout: ``RUN_DIR/checkpoints/<step>/{state, meta}``. Orbax writes each checkpoint to a temporary
directory and renames it when complete, so a crash mid-save leaves the previous checkpoints
intact. `restore_latest` restores into an explicit abstract target (shapes, dtypes and, when
present, shardings of the current state) and falls back to the previous checkpoint, with a
warning naming it, when the latest one cannot be read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from sspo_jax.algorithms.config import ConfigError

log = logging.getLogger(__name__)


def _abstract(tree):
    def leaf(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    return jax.tree.map(leaf, tree)


class Checkpointer:
    """Saves and restores ``(state, meta)`` pairs under `directory`, keeping the last `keep`."""

    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves synchronously (returns when the checkpoint is complete on disk)."""
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, template: Any) -> tuple[Any, dict[str, Any]]:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(template)), meta=ocp.args.JsonRestore()))
        return restored.state, dict(restored.meta)

    def restore_latest(self, template: Any, *, check_meta=None) -> Optional[tuple[int, Any, dict[str, Any]]]:
        """The newest readable checkpoint as ``(step, state, meta)``, or None when there is none.

        `check_meta(meta)` may raise to refuse a checkpoint (e.g. of a different model); that
        error propagates. Unreadable checkpoints are skipped with a warning.
        """
        for step in reversed(self.steps()):
            try:
                meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            except Exception as err:  # noqa: BLE001 - any read failure means "corrupt": try the previous one
                log.warning("checkpoint %s/%d is unreadable (%s); falling back to the previous one",
                            self.directory, step, err)
                continue
            if check_meta is not None:
                check_meta(dict(meta))
            try:
                state, meta = self.restore(step, template)
            except ConfigError:
                raise
            except Exception as err:  # noqa: BLE001
                log.warning("checkpoint %s/%d is unreadable (%s); falling back to the previous one",
                            self.directory, step, err)
                continue
            return step, state, meta
        return None

    def close(self) -> None:
        self.manager.close()
