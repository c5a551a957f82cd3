"""An exclusive lock on a run directory, so that two trainers never write the same run.

    lock = acquire_run_lock(run_dir)    # RunLockedError naming the holder when another run has it
    ...
    lock.release()

The lock is ``fcntl.flock`` on ``RUN_DIR/.sspo.lock``. The file holds the holder's pid, host and
start time (JSON), for the message a second trainer gets; the lock itself is the kernel's, so it
is released when the holder closes it, exits or is killed (SIGKILL included): a lock file left
behind by a dead process is free, never stale. On a network file system ``flock`` is as reliable
as the file system's locking (NFS v4 emulates it with byte-range locks; a client that vanished
holds its locks until the server's lease expires); when the recorded holder runs on this host but
its pid is gone, the message says so.

Multi-process jobs: only process 0 takes the lock (the other processes of the same job write
their checkpoint shards into the same directory by design).
"""

from __future__ import annotations

import errno
import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from sspo_jax.errors import ConfigError

LOCK_FILE = ".sspo.lock"


class RunLockedError(ConfigError):
    """The run directory is locked by another trainer; the message names the holder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder_text(info: dict[str, Any]) -> str:
    if not info:
        return "another process (it is starting; no holder recorded yet)"
    pid, host, since = info.get("pid"), info.get("host"), info.get("since")
    text = f"pid {pid} on host {host}" + (f" since {since}" if since else "")
    if host == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
        text += (" (that process no longer exists: another process inherited the lock, or the file system "
                 "keeps a lock of a dead process; check with `fuser` or wait for it to expire)")
    return text


class RunLock:
    """A held run-directory lock (see `acquire_run_lock`).

    Attributes:
      path: the lock file.
      info: what the file records: pid, host, since (ISO time).
    """

    def __init__(self, path: Path, fd: int, info: dict[str, Any]) -> None:
        self.path, self._fd, self.info = path, fd, info

    @property
    def held(self) -> bool:
        """True until `release`."""
        return self._fd is not None

    def release(self) -> None:
        """Clears the holder record and releases the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):  # the holder record is for messages only
            os.ftruncate(fd, 0)
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(run_dir: str | Path) -> dict[str, Any]:
    """The holder record of ``RUN_DIR/.sspo.lock`` (empty when none is recorded)."""
    try:
        text = (Path(run_dir) / LOCK_FILE).read_text()
        info = json.loads(text) if text.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def acquire_run_lock(run_dir: str | Path) -> RunLock:
    """Takes the exclusive lock of `run_dir` (created if needed) without waiting.

    Raises:
      RunLockedError: another process holds it; the message names its pid, host and start time.
      ConfigError: the lock file cannot be created (the directory is not writable).
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise ConfigError(f"run directory {str(run_dir)!r} is not writable ({err.strerror}); "
                          "choose another --run-dir or free disk space") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ConfigError(f"cannot lock run directory {str(run_dir)!r} ({err.strerror}); its file system may "
                              "not support file locks: use a local or lock-capable directory") from None
        raise RunLockedError(f"run directory {str(run_dir)!r} is in use by another trainer: "
                             f"{_holder_text(read_holder(run_dir))}; wait for it to finish or stop it, or choose "
                             "another --run-dir") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with contextlib.suppress(OSError):  # the record is for messages only; the lock is held regardless
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return RunLock(path, fd, info)


def maybe_acquire_run_lock(run_dir: str | Path, main_process: bool) -> Optional[RunLock]:
    """`acquire_run_lock` in process 0 (or the only process); None in the other processes of a job."""
    return acquire_run_lock(run_dir) if main_process else None


__all__ = ["LOCK_FILE", "RunLock", "RunLockedError", "acquire_run_lock", "maybe_acquire_run_lock", "read_holder"]
