"""Stopping a run cleanly on SIGTERM or SIGINT (Ctrl-C): the first signal lets the current step
finish, which is then checkpointed, and raises `TrainingStopped`; a second signal acts at once.
Multi-process jobs agree on the stop with a collective, so every process stops at the same step.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable, Optional

from sspo_jax.errors import TrainingError
from sspo_jax.parallel.host_data import all_processes


class TrainingStopped(TrainingError):
    """Training was stopped by SIGTERM or SIGINT (Ctrl-C) after a finished step, which was checkpointed.

    Attributes:
      signum: the signal's number (the CLI exits with 128 + signum).
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StopRequest:
    """SIGTERM / SIGINT handlers for the training loop: the first signal asks the loop to stop after
    the step it is in (which is then checkpointed); the handlers are then put back, so a second
    signal acts at once (SIGTERM terminates, Ctrl-C raises KeyboardInterrupt). Only on the main thread."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say, self.signum, self._previous = say, None, {}

    @property
    def signal_name(self) -> Optional[str]:
        """The name of the signal received (``SIGTERM``, ``SIGINT``), or None when none was."""
        return signal.Signals(self.signum).name if self.signum is not None else None

    def install(self) -> None:
        """Installs the handlers (on the main thread only; elsewhere signals stay as they are)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self.uninstall()
        self.say(f"{signal.Signals(signum).name} received: finishing the current step, then saving a checkpoint "
                 "and stopping (send it again to stop at once)")

    def agree(self) -> None:
        """Multi-process jobs: a stop asked of any process is a stop for all (a collective)."""
        if not all_processes(self.signum is None) and self.signum is None:
            self.signum = signal.SIGTERM

    def raise_stopped(self, step: int, total: int, checkpointer: Any) -> None:
        """Raises the `TrainingStopped` of a requested stop after `step` of `total` (its checkpoint,
        if any, already written by `checkpointer`)."""
        where = (f"checkpoint {checkpointer.directory}/{step} written; run the same command again to resume"
                 if checkpointer is not None else "checkpoint.enabled=false: nothing was saved")
        raise TrainingStopped(f"stopped by {self.signal_name} after step {step} of {total} ({where})", self.signum)

    def uninstall(self) -> None:
        """Puts the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
