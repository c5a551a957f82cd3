"""A process pool that runs picklable calls with a per-item timeout enforced by the parent.

math-verify's own timeouts use ``signal.alarm``, which only works on the main thread; inside
threads it silently returns 0 for everything (PITFALLS.md 11). `VerifierPool` instead runs each
item in a `concurrent.futures.ProcessPoolExecutor` whose workers are started with ``spawn`` or
``forkserver`` (never ``fork``: the parent has usually imported JAX, which is multithreaded) and
measures each item's run time in the parent:

- items travel in chunks, at most ``workers`` chunks in flight, so a chunk starts as soon as it
  is submitted; the worker times each item and reports one slower than ``timeout_s`` as a
  *timeout*; the parent cuts a chunk off at ``len(chunk) * timeout_s`` (an item that never
  returns, e.g. stuck in C code where no signal reaches it): every worker of the pool is killed
  (a `ProcessPoolExecutor` cannot lose one worker and go on), the pool is replaced, the other
  in-flight chunks are resubmitted (they were not at fault) and the cut chunk's items rerun as
  single items, up to ``workers`` at a time (each has its own deadline), so the hung item is the
  one counted;
- an item whose call raises is a *failure* (the message is kept);
- a worker that dies on its own (a segfault in a parser) breaks the pool: the in-flight items are
  then rerun one at a time in a fresh pool, so the item that kills a worker again is the one
  counted as a failure and the others complete.

The cost of replacements is bounded: after ``max_restarts_per_call`` replacements within one
`map` call (every item hangs, or ``timeout_s`` is far too low), the items not yet finished are
not run again but marked ``TIMEOUT`` (or ``FAILED`` after crashes) with a message saying so, so one
call takes at most about ``(max_restarts_per_call + 1) * (chunk timeout + pool start)``.

Nothing is dropped silently: every item ends as ``OK``, ``FAILED`` or ``TIMEOUT``. One pool per
(workers, start method) is shared by the process (`get_pool`), created lazily, kept alive
across calls and closed by `close_pools` (also registered with `atexit`). Calls are serialised by
a lock, so the pool may be used from any thread.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import dataclasses
import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

OK, FAILED, TIMEOUT = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class PoolResult:
    """Outcome of `VerifierPool.map` over N items.

    Attributes:
      values: list of N results; None where the item failed or timed out.
      status: int8 [N], `OK`, `FAILED` or `TIMEOUT` per item.
      errors: list of N messages (None for OK items).
    """

    values: list[Any]
    status: np.ndarray
    errors: list[str | None]

    @property
    def failures(self) -> int:
        """Number of items whose call raised or whose worker crashed."""
        return int(np.sum(self.status == FAILED))

    @property
    def timeouts(self) -> int:
        """Number of items cut off at the time limit."""
        return int(np.sum(self.status == TIMEOUT))


def _report_pid(pid_queue: Any) -> None:
    """Worker initializer: tell the parent this worker's pid (so a hung worker can be killed)."""
    import os

    pid_queue.put(os.getpid())


class VerifierPool:
    """Worker processes for CPU-bound verification with parent-enforced per-item timeouts.

    Args:
      workers: number of worker processes (>= 1).
      start_method: ``spawn`` or ``forkserver``.
      warm_up: a picklable no-argument callable every fresh worker runs once before any item
        (e.g. import math-verify), so start-up time never counts against an item's timeout.
      startup_timeout_s: time allowed for all workers of a fresh pool to start and warm up.
      max_restarts_per_call: pool replacements allowed within one `map` call; after that the
        unfinished items are marked instead of run (see the module docstring).
    Attributes:
      restarts: how many times the pool was replaced after a timeout or a worker crash.
    Raises:
      ValueError: ``workers < 1`` or another start method.
    """

    def __init__(
        self,
        workers: int,
        start_method: str = "spawn",
        warm_up: Callable[[], Any] | None = None,
        startup_timeout_s: float = 180.0,
        max_restarts_per_call: int = 3,
    ) -> None:
        if max_restarts_per_call < 0:
            raise ValueError(f"VerifierPool needs max_restarts_per_call >= 0, got {max_restarts_per_call}")
        if workers < 1:
            raise ValueError(f"VerifierPool needs workers >= 1, got {workers}")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method must be 'spawn' or 'forkserver' (never 'fork'), got {start_method!r}")
        self.workers = workers
        self.start_method = start_method
        self._warm_up = warm_up
        self._startup_timeout_s = startup_timeout_s
        self.max_restarts_per_call = max_restarts_per_call
        self._ctx = multiprocessing.get_context(start_method)
        self._lock = threading.Lock()
        self._executor: cf.ProcessPoolExecutor | None = None
        self._pid_queue: Any = None
        self._pids: set[int] = set()
        self.restarts = 0

    # -- lifecycle -------------------------------------------------------------------------

    def _start(self) -> cf.ProcessPoolExecutor:
        self._pid_queue = self._ctx.SimpleQueue()
        self._pids = set()
        executor = cf.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._ctx,
            initializer=_report_pid,
            initargs=(self._pid_queue,),
        )
        self._executor = executor
        if self._warm_up is not None:
            futures = [executor.submit(self._warm_up) for _ in range(self.workers)]
            done, not_done = cf.wait(futures, timeout=self._startup_timeout_s)
            if not_done:
                self._kill()
                raise RuntimeError(
                    f"reward worker processes did not start within {self._startup_timeout_s:.0f} s; "
                    "the machine may be overloaded: lower rewards.workers or use rewards.workers=0"
                )
            for future in done:
                try:
                    future.result()
                except BrokenProcessPool as exc:
                    self._kill()
                    raise RuntimeError(
                        "reward worker processes died while starting. With the spawn/forkserver start "
                        "methods a script that computes rewards must guard its entry point with "
                        "`if __name__ == '__main__':`; otherwise see the workers' error output above"
                    ) from exc
        return executor

    def _collect_pids(self) -> None:
        while self._pid_queue is not None and not self._pid_queue.empty():
            self._pids.add(self._pid_queue.get())

    def _kill(self) -> None:
        """Kill every worker of the current executor (they may be stuck in C code) and drop it."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        self._collect_pids()
        children = {p.pid: p for p in multiprocessing.active_children()}
        targets = {pid: children[pid] for pid in self._pids if pid in children}
        # and every worker the executor started, also one that has not reported its pid yet (still
        # starting when its first item's deadline passed): left alive, it would take the next queued
        # item, and a hung item would then block `shutdown` forever
        targets.update(dict(getattr(executor, "_processes", None) or {}))
        for proc in targets.values():
            proc.kill()
        for proc in targets.values():
            proc.join(timeout=10)
        executor.shutdown(wait=True, cancel_futures=True)
        if self._pid_queue is not None:
            self._pid_queue.close()
        self._pid_queue = None
        self._pids = set()

    def close(self) -> None:
        """Stop the workers (killing any still busy). The pool restarts on its next `map`."""
        with self._lock:
            self._kill()

    # -- work ------------------------------------------------------------------------------

    def map(self, fn: Callable[..., Any], items: Sequence[tuple[Any, ...]], timeout_s: float,
            chunk_size: int | None = None) -> PoolResult:
        """Run ``fn(*item)`` for every item, each limited to `timeout_s` seconds of run time.

        Items travel in chunks (fewer round trips between processes). A worker times each item
        and reports one that took longer than `timeout_s` as a timeout; the parent cuts a chunk
        off at ``len(chunk) * timeout_s`` (an item that never returns) and reruns that chunk's
        items one by one, so the hung item is the one counted.

        Args:
          fn: a picklable (module-level) function.
          items: argument tuples, one per item.
          timeout_s: per-item limit in seconds.
          chunk_size: items per task; None = up to 16, so that each worker gets about 4 chunks.
        Returns:
          `PoolResult` in item order.
        Raises:
          RuntimeError: a fresh pool's workers did not start or warm up in time, or died doing so.
        """
        n = len(items)
        values: list[Any] = [None] * n
        status = np.full(n, OK, dtype=np.int8)
        errors: list[str | None] = [None] * n
        if n == 0:
            return PoolResult(values, status, errors)
        if chunk_size is None:
            chunk_size = max(1, min(16, n // (4 * self.workers)))
        with self._lock:
            pending = collections.deque(tuple(range(i, min(i + chunk_size, n))) for i in range(0, n, chunk_size))
            suspects: collections.deque[tuple[int, ...]] = collections.deque()  # single items, run alone
            inflight: dict[cf.Future, tuple[tuple[int, ...], float]] = {}
            executor = self._executor
            restarts_here = 0

            def submit(unit: tuple[int, ...]) -> None:
                future = executor.submit(_run_chunk, fn, [items[i] for i in unit], timeout_s)
                inflight[future] = (unit, time.monotonic())

            def replace_pool(state: int) -> None:
                """Kills the pool (the next loop starts a fresh one); past the cap, gives up on the rest."""
                nonlocal executor, restarts_here
                inflight.clear()
                self._kill()
                self.restarts += 1
                restarts_here += 1
                executor = None
                if restarts_here > self.max_restarts_per_call:
                    why = (f"not verified: the verifier pool was already replaced {self.max_restarts_per_call} times "
                           f"in this call after {'timeouts' if state == TIMEOUT else 'worker crashes'}")
                    for i in {i for unit in (*pending, *suspects) for i in unit}:
                        status[i], errors[i] = state, why
                    pending.clear()
                    suspects.clear()

            try:
                while pending or suspects or inflight:
                    if executor is None:  # first use, or replaced after a timeout or crash
                        executor = self._start()
                    try:
                        if suspects:
                            if not inflight:
                                submit(suspects[0])
                                suspects.popleft()
                        else:
                            while pending and len(inflight) < self.workers:
                                submit(pending[0])
                                pending.popleft()
                    except BrokenProcessPool:  # a worker died while idle: rerun what was in flight
                        suspects.extend((i,) for unit, _ in inflight.values() for i in unit)
                        replace_pool(FAILED)
                        continue
                    isolated = len(inflight) == 1 and len(next(iter(inflight.values()))[0]) == 1
                    next_deadline = min(start + timeout_s * len(unit) for unit, start in inflight.values())
                    done, _ = cf.wait(list(inflight), timeout=max(0.0, next_deadline - time.monotonic()),
                                      return_when=cf.FIRST_COMPLETED)
                    broken = False
                    for future in done:
                        unit, _ = inflight.pop(future)
                        try:
                            outcomes = future.result()
                        except BrokenProcessPool as exc:
                            if isolated:  # the only item running killed its worker
                                status[unit[0]], errors[unit[0]] = FAILED, f"worker process died: {exc}"
                            else:
                                suspects.extend((i,) for i in unit)
                            broken = True
                            continue
                        except Exception as exc:  # the chunk could not be sent or received (pickling)
                            for i in unit:
                                status[i], errors[i] = FAILED, f"{type(exc).__name__}: {exc}"
                            continue
                        for i, (state, value, error) in zip(unit, outcomes):
                            values[i], status[i], errors[i] = value, state, error
                    now = time.monotonic()
                    expired = [f for f, (unit, start) in inflight.items() if now - start >= timeout_s * len(unit)]
                    if broken:
                        suspects.extend((i,) for unit, _ in inflight.values() for i in unit)
                        replace_pool(FAILED)
                    elif expired:
                        alone: list[tuple[int, ...]] = []
                        for future in expired:
                            unit, _ = inflight.pop(future)
                            if len(unit) == 1:
                                status[unit[0]], errors[unit[0]] = TIMEOUT, f"no result within {timeout_s:g} s"
                            else:  # some item of the chunk hung: find which by running them as single items
                                alone.extend((i,) for i in unit)
                        pending.extendleft(unit for unit, _ in reversed(list(inflight.values())))
                        pending.extendleft(reversed(alone))  # in parallel: each has its own deadline
                        replace_pool(TIMEOUT)
            except BaseException:  # interrupted (e.g. KeyboardInterrupt): leave no busy workers behind
                self._kill()
                raise
        return PoolResult(values, status, errors)


def _run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]],
               timeout_s: float) -> list[tuple[int, Any, str | None]]:
    """Worker side: ``fn(*args)`` for each args in `chunk`, timed; (status, value, error) each.

    An item that raises is `FAILED` (its message kept); one that returns after more than
    `timeout_s` seconds is `TIMEOUT` (its value dropped), as if the parent had cut it off.
    """
    out: list[tuple[int, Any, str | None]] = []
    for args in chunk:
        start = time.monotonic()
        try:
            value = fn(*args)
        except Exception as exc:
            out.append((FAILED, None, f"{type(exc).__name__}: {exc}"))
            continue
        if time.monotonic() - start > timeout_s:
            out.append((TIMEOUT, None, f"no result within {timeout_s:g} s"))
        else:
            out.append((OK, value, None))
    return out


_POOLS: dict[tuple[int, str], VerifierPool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(workers: int, start_method: str = "spawn") -> VerifierPool:
    """The process-wide math-verify pool for (workers, start_method), created on first use."""
    from sspo_jax.rewards.verify import warm_up

    with _POOLS_LOCK:
        key = (workers, start_method)
        if key not in _POOLS:
            _POOLS[key] = VerifierPool(workers, start_method, warm_up=warm_up)
        return _POOLS[key]


def close_pools() -> None:
    """Stop every shared pool's workers (they restart on the next call)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.close()


atexit.register(close_pools)
