"""The verification process pool: per-item timeouts, crashes, failures, reuse, threads."""

from __future__ import annotations

import operator
import os
import threading
import time

import numpy as np
import pytest

from sspo_jax.rewards import VerifierPool, get_pool, math_reward
from sspo_jax.rewards.pool import FAILED, OK, TIMEOUT

HANGING = "The answer is \\boxed{9^{9^{9^{9}}}}."  # sympy never finishes comparing this with 1


@pytest.fixture(scope="module")
def pool():
    # warm_up makes every fresh pool wait for its workers, so that process start-up (slow on a loaded
    # machine) never counts against the short per-item timeouts used below
    p = VerifierPool(2, "spawn", warm_up=os.getpid)
    yield p
    p.close()


def test_hung_item_is_cut_off_counted_and_pool_replaced(pool):
    start = time.monotonic()
    result = pool.map(time.sleep, [(0.0,), (60.0,), (0.0,), (0.0,)], timeout_s=1.0)
    assert time.monotonic() - start < 30
    assert result.status.tolist() == [OK, TIMEOUT, OK, OK]
    assert result.timeouts == 1 and result.failures == 0
    assert "1 s" in result.errors[1]
    restarts = pool.restarts
    assert restarts >= 1
    # the replaced pool still works
    again = pool.map(operator.add, [(1, 2), (3, 4)], timeout_s=10.0)
    assert again.values == [3, 7] and again.status.tolist() == [OK, OK]


def test_hung_item_inside_a_chunk_is_found_and_counted(pool):
    # the chunk [0, 60, 0, 0] is cut off at 4 * 0.5 s; its items then rerun one by one
    delays = [(0.0,), (60.0,), (0.0,), (0.0,), (0.0,), (0.0,), (0.0,), (0.0,)]
    start = time.monotonic()
    result = pool.map(time.sleep, delays, timeout_s=0.5, chunk_size=4)
    assert time.monotonic() - start < 30
    assert result.status.tolist() == [OK, TIMEOUT, OK, OK, OK, OK, OK, OK]


def test_slow_item_is_timed_by_the_worker(pool):
    # 1.2 s > timeout but < the chunk's 4 * 1 s: the worker itself reports the timeout
    restarts = pool.restarts
    result = pool.map(time.sleep, [(0.0,), (1.2,), (0.0,), (0.0,)], timeout_s=1.0, chunk_size=4)
    assert result.status.tolist() == [OK, TIMEOUT, OK, OK]
    assert pool.restarts == restarts  # nothing had to be killed


def test_raising_call_is_a_counted_failure(pool):
    result = pool.map(int, [("12",), ("x",), ("7",)], timeout_s=10.0, chunk_size=3)
    assert result.values[0] == 12 and result.values[2] == 7
    assert result.status.tolist() == [OK, FAILED, OK]
    assert "ValueError" in result.errors[1]


def test_worker_crash_is_attributed_to_its_item(pool):
    # os._exit kills the worker process: the pool breaks, in-flight items rerun one at a time,
    # and only the crashing item is counted as a failure.
    result = pool.map(os._exit, [(3,)], timeout_s=10.0)
    assert result.status.tolist() == [FAILED]
    mixed = pool.map(operator.mul, [(2, 3), (4, 5), (6, 7)], timeout_s=10.0)
    assert mixed.values == [6, 20, 42]


def test_crash_among_others_spares_the_others():
    # operator.call(fn, *args) lets one map run different functions per item
    items = [(operator.neg, 1), (os._exit, 3), (operator.neg, 2)]
    # warm_up makes every fresh pool wait for its workers, so that process start-up (slow on a loaded
    # machine) never counts against the short per-item timeouts used below
    p = VerifierPool(2, "spawn", warm_up=os.getpid)
    try:
        result = p.map(operator.call, items, timeout_s=10.0)
    finally:
        p.close()
    assert result.status.tolist() == [OK, FAILED, OK]
    assert result.values[0] == -1 and result.values[2] == -2


def test_math_reward_counts_a_hanging_verification():
    responses = ["\\boxed{2}", HANGING, "\\boxed{3}"]
    out = math_reward(responses, ["2", "1", "4"], workers=2, timeout_s=1.0)
    assert out.timeouts == 1 and out.failures == 0
    assert out.scores.tolist() == [1.0, 0.0, 0.0]
    # the shared pool was replaced and keeps working
    assert math_reward(["\\boxed{5}"], ["5"], workers=2).scores.tolist() == [1.0]


def test_in_process_main_thread_uses_math_verify_timeout():
    out = math_reward([HANGING, "\\boxed{1}"], ["1", "1"], workers=0, timeout_s=1.0)
    assert out.timeouts == 1
    assert out.scores.tolist() == [0.0, 1.0]


def test_math_reward_from_worker_threads():
    """Off the main thread math-verify's signal timeouts cannot work; the pool path must score
    correctly from several threads at once (PITFALLS.md 11), and the in-process path too."""
    responses = ["\\boxed{\\frac{1}{2}}", "\\boxed{3}", "\\boxed{0.25}"]
    golds = ["0.5", "4", "\\frac14"]
    results: dict[str, np.ndarray] = {}

    def work(name: str, workers: int) -> None:
        results[name] = math_reward(responses, golds, workers=workers, timeout_s=20).scores

    threads = [threading.Thread(target=work, args=(f"pool{i}", 2)) for i in range(3)]
    threads.append(threading.Thread(target=work, args=("inproc", 0)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for scores in results.values():
        assert scores.tolist() == [1.0, 0.0, 1.0]


def test_shared_pool_is_reused():
    assert get_pool(2) is get_pool(2)


def test_bad_pool_arguments():
    with pytest.raises(ValueError, match="workers"):
        VerifierPool(0)
    with pytest.raises(ValueError, match="fork"):
        VerifierPool(1, "fork")
