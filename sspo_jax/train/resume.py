"""Checkpoint metadata and resuming: what a checkpoint records besides the state, and restoring
the newest readable one (or a given step) into the current state's abstract target.

A run directory's checkpoints are refused (`ConfigError`) when they belong to another model or
were trained with another config (`config_changes`: the checkpoint's saved config against the
current one, before any array is read), and never silently ignored: when every checkpoint is
unreadable the run stops instead of starting afresh. Orbax's own tracebacks of a failed restore go
to ``RUN_DIR/restore_errors.log``; the console gets one warning line per checkpoint.

Keys in `SAFE_TO_CHANGE` (loop length, evaluation, logging, checkpoint cadence, the mesh, the
verifier pool, memory-only model settings) may change on resume; any other change needs an
explicit ``allow`` (``sspo-jax train --allow-config-change KEY``). Either way each change is
recorded in ``RUN_DIR/config_changes.jsonl`` (`record_config_changes`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from sspo_jax.errors import CheckpointError, ConfigError, one_line
from sspo_jax.train.checkpoint import Checkpointer
from sspo_jax.train.config import TrainConfig, config_to_mapping, load_config


def checkpoint_meta(cfg: TrainConfig, step: int, data_cursor: dict, model_config: Any,
                    eval_history: list) -> dict[str, Any]:
    """The JSON metadata saved with the state of `step`: data cursor, config, model config, evaluations."""
    return {"step": step, "data_cursor": data_cursor, "config": config_to_mapping(cfg),
            "model_config": dataclasses.asdict(model_config), "eval_history": eval_history}


def check_same_model(run_dir: Path, model_config: Any, meta: dict[str, Any]) -> None:
    """Raises `ConfigError` when the checkpoint's `meta` was written for a different model."""
    saved = meta.get("model_config")
    here = json.loads(json.dumps(dataclasses.asdict(model_config)))
    if saved is not None and saved != here:
        diff = sorted(k for k in set(saved) | set(here) if saved.get(k) != here.get(k))
        raise ConfigError(f"run directory {str(run_dir)!r} holds checkpoints of a different model "
                          f"(differs in {diff}); use a new --run-dir or the original model.path")


# ---- config changes on resume ------------------------------------------------------------------

SAFE_TO_CHANGE = ("train.steps", "train.micro_batch_size", "train.trim_multiple", "train.max_consecutive_skips",
                  "eval", "logging", "checkpoint.every", "checkpoint.keep", "mesh", "distributed", "run_dir", "rewards.workers",
                  "rewards.timeout_s", "rewards.start_method", "rewards.max_gold_unparsed_frac",
                  "rewards.timeout_warn_frac", "model.remat", "model.logprob_chunk_size")
"""Config keys (or whole sections) that may differ between a checkpoint and the run resuming it:
they change how long, how fast or with how much memory the run goes on, not what it computes."""

CHANGES_FILE = "config_changes.jsonl"
RESTORE_LOG = "restore_errors.log"


def _covered(prefixes: tuple[str, ...] | list[str], key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


@dataclasses.dataclass(frozen=True)
class ConfigChange:
    """One config key whose value differs from the checkpoint's.

    Attributes:
      key: the dotted key (``optim.lr``).
      old: the checkpoint's value (JSON).
      new: the current value (JSON).
      safe: the key is in `SAFE_TO_CHANGE`.
    """

    key: str
    old: Any
    new: Any
    safe: bool

    def describe(self) -> str:
        """``key: old -> new`` with JSON values."""
        return f"{self.key}: {json.dumps(self.old)} -> {json.dumps(self.new)}"


def _plain(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(config_to_mapping(cfg)))


def config_changes(saved: Optional[dict[str, Any]], cfg: TrainConfig) -> list[ConfigChange]:
    """The keys whose value in `cfg` differs from `saved` (a checkpoint's ``meta["config"]``).

    A key missing on either side (a setting added or removed since the checkpoint was written)
    is not a change; a checkpoint without a saved config has no changes.
    """
    out: list[ConfigChange] = []

    def walk(old: dict[str, Any], new: dict[str, Any], prefix: str) -> None:
        for key, b in new.items():
            if key not in old:
                continue
            a, path = old[key], prefix + key
            if isinstance(a, dict) and isinstance(b, dict):
                walk(a, b, path + ".")
            elif a != b:
                out.append(ConfigChange(path, a, b, _covered(SAFE_TO_CHANGE, path)))

    if isinstance(saved, dict):
        walk(saved, _plain(cfg), "")
    return out


def check_allowed_keys(cfg: TrainConfig, allow: tuple[str, ...] | list[str]) -> None:
    """Raises `ConfigError` when a key of `allow` (``--allow-config-change``) is no config key or section."""
    known: set[str] = set()

    def walk(tree: dict[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            known.add(prefix + key)
            if isinstance(value, dict):
                walk(value, prefix + key + ".")

    walk(_plain(cfg), "")
    for key in allow:
        if key not in known and not key.startswith("mesh."):
            raise ConfigError(f"--allow-config-change {key!r} is not a config key or section (e.g. optim.lr, "
                              "algorithm): check its spelling")


def check_config_unchanged(run_dir: Path, cfg: TrainConfig, meta: dict[str, Any],
                           allow: tuple[str, ...] | list[str] = ()) -> list[ConfigChange]:
    """The changes of `cfg` against the checkpoint's `meta` (all safe or allowed); else `ConfigError`
    listing the others (old -> new)."""
    changes = config_changes(meta.get("config"), cfg)
    refused = [c for c in changes if not c.safe and not _covered(allow, c.key)]
    if refused:
        step = meta.get("step", "?")
        raise ConfigError(
            f"run directory {str(run_dir)!r} was trained with a different config (checkpoint of step {step}): "
            f"{'; '.join(c.describe() for c in refused)}; resume with the original values, use a new --run-dir, "
            "or accept the change with --allow-config-change KEY (repeatable; Trainer(allow_config_change=...)); "
            f"keys safe to change need no flag: {', '.join(SAFE_TO_CHANGE)}")
    return changes


def record_config_changes(run_dir: Path, step: int, changes: list[ConfigChange],
                          allow: tuple[str, ...] | list[str] = ()) -> None:
    """Appends one JSON line per change to ``RUN_DIR/config_changes.jsonl``: time, the step resumed
    from, key, old and new value, and ``reason`` (``safe`` or ``allowed``, i.e. by an explicit flag)."""
    if not changes:
        return
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with (Path(run_dir) / CHANGES_FILE).open("a") as f:
        for c in changes:
            f.write(json.dumps({"time": now, "step": step, "key": c.key, "old": c.old, "new": c.new,
                                "reason": "safe" if c.safe else "allowed"}) + "\n")


def read_config_changes(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/config_changes.jsonl`` (empty when the run's config never changed)."""
    path = Path(run_dir) / CHANGES_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a crash
            continue
    return out


# ---- restoring ----------------------------------------------------------------------------------

_ORBAX_LOGGERS = ("absl", "orbax", "asyncio", "jax", "tensorstore")


@contextlib.contextmanager
def _orbax_details_to(path: Optional[Path]) -> Iterator[None]:
    """Sends what Orbax and its helpers print or log while restoring (the tracebacks of unreadable
    checkpoints, written by its I/O threads to ``sys.stderr``) to the file `path` instead of the
    console; sspo_jax's own warnings stay on the console. A no-op when `path` is None or cannot be
    written; the file is removed again when nothing was written to a new one."""
    if path is None:
        yield
        return
    existed = path.exists()
    try:
        stream = path.open("a")
    except OSError:
        yield
        return
    start = stream.tell()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    saved = []
    for name in _ORBAX_LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.propagate, list(lg.handlers)))
        lg.handlers, lg.propagate = [handler], False
    console = sys.stderr
    console.flush()
    ours = logging.StreamHandler(console)  # sspo_jax's warnings keep going to the console
    ours.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    pkg = logging.getLogger("sspo_jax")
    relay = not any(isinstance(h, logging.StreamHandler) for lg in (pkg, logging.getLogger()) for h in lg.handlers)
    if relay:
        pkg.addHandler(ours)
    sys.stderr = stream
    try:
        yield
    finally:
        sys.stderr = console
        if relay:
            pkg.removeHandler(ours)
        for lg, propagate, handlers in saved:
            lg.handlers, lg.propagate = handlers, propagate
        stream.flush()
        empty = stream.tell() == start
        stream.close()
        if empty and not existed:
            path.unlink(missing_ok=True)


def restore_checkpoint(checkpointer: Checkpointer, template: Any, model_config: Any, run_dir: Path,
                       step: Optional[int] = None, *, cfg: Optional[TrainConfig] = None,
                       allow_config_change: tuple[str, ...] | list[str] = (),
                       details_log: Optional[Path] = None) -> Optional[tuple[int, Any, dict[str, Any]]]:
    """``(step, state, meta)`` of checkpoint `step` (None = the newest readable one), restored into
    the abstract target of `template`; None when the directory has no checkpoint.

    Before any array is read, the checkpoint's metadata is checked: the same model, and with `cfg`
    the same config up to `SAFE_TO_CHANGE` and `allow_config_change` (`check_config_unchanged`).
    Orbax's own log output (tracebacks of unreadable checkpoints) goes to `details_log`.

    Raises:
      ConfigError: the checkpoints are of another model or config, every checkpoint is unreadable,
        or `step` is not on disk or unreadable.
    """
    where = checkpointer.directory
    details = f"; details in {details_log}" if details_log is not None else ""

    def check(meta: dict[str, Any]) -> None:
        check_same_model(run_dir, model_config, meta)
        if cfg is not None:
            check_config_unchanged(run_dir, cfg, meta, allow_config_change)

    with _orbax_details_to(details_log):
        if step is None:
            found = checkpointer.restore_latest(template, check_meta=check)
            if found is None and checkpointer.steps():  # never silently start afresh over a run's checkpoints
                raise ConfigError(f"every checkpoint in {where} {checkpointer.steps()} is unreadable or corrupt (see "
                                  f"the warnings above{details}); move that directory away to train from scratch, "
                                  "or use a new --run-dir")
            return found
        if step not in checkpointer.steps():
            raise ConfigError(f"no checkpoint of step {step} in {where}; available: {checkpointer.steps()}")
        try:
            check(checkpointer.read_meta(step))  # a different model or config fails here, not in Orbax
            state, meta = checkpointer.restore(step, template)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - unreadable or corrupt: a user-facing error naming it
            raise ConfigError(f"checkpoint {where}/{step} is unreadable or corrupt ({one_line(err, 300)}); choose "
                              f"another step of {checkpointer.steps()}") from None
    return step, state, meta


def resumed_trainer(trainer_cls: Any, path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> Any:
    """A `Trainer` resumed from a run's checkpoint (``RUN_DIR`` = the newest, ``RUN_DIR/checkpoints/STEP``),
    with the run's own config: to continue training it or to inspect its full state (optimizer
    state and data cursor included). For inference use `sspo_jax.train.load_run`, which reads far less.

    Raises:
      CheckpointError: the run holds no checkpoint.
    """
    from sspo_jax.train.load_run import split_run_path

    run, step = split_run_path(path)
    cfg = load_config(run / "config.yaml", ["logging.progress=false", "logging.tensorboard=false", *overrides])
    trainer = trainer_cls(cfg, run, echo=lambda s: None, resume=True, resume_step=step)
    if trainer.start_step == 0:
        trainer.close()
        raise CheckpointError(f"{run} holds no checkpoint to resume from")
    return trainer


def announce_changes(changes: list, step: int, run_dir: Path, echo: Any) -> None:
    """One console line per config change accepted on resuming from checkpoint `step`."""
    for change in changes:
        why = "safe to change" if change.safe else "allowed by --allow-config-change"
        echo(f"config changed since checkpoint {step}: {change.describe()} ({why}; recorded in "
             f"{run_dir / CHANGES_FILE})")
