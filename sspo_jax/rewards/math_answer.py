"""The math answer reward: extract the final answer, compare it with the gold one via math-verify.

Verification runs in the shared process pool (`pool.py`, ``cfg.workers >= 1``) with a per-item
time limit enforced by the parent, or in the calling process (``cfg.workers == 0``): on the main
thread math-verify's own signal-based timeout applies (whole seconds, rounded up); off the main
thread it cannot (signal.alarm), so it is disabled there and an item has no time limit: use the
pool from threads. Timeouts and verifier crashes score 0 and are counted, never silent.

Gold answers are checked first, once per distinct gold (`verify.gold_parses`, in the pool or
in-process like the verification): rows whose gold math-verify cannot parse score 0 without
being verified and are counted as ``gold_unparsed`` (a data problem, not a wrong response).
"""

from __future__ import annotations

import math
import threading

import numpy as np

from sspo_jax.rewards.config import RewardConfig
from sspo_jax.rewards.extract import extract_answer, gold_answer_text
from sspo_jax.rewards.inputs import RewardInput
from sspo_jax.rewards.output import RewardOutput
from sspo_jax.rewards.registry import register_reward
from sspo_jax.rewards.pool import FAILED, OK, TIMEOUT, get_pool
from sspo_jax.rewards.verify import gold_parses, verify_answer


@register_reward("math")
def math_reward(inp: RewardInput, cfg: RewardConfig) -> RewardOutput:
    """1.0 where a response's final answer is equivalent to its gold answer, else 0.0.

    Args:
      inp: N responses and their gold answers (GSM8K ``... #### 18``, ``\\boxed{}`` or bare text;
        see `RewardConfig.gold_extraction`).
      cfg: settings. Called loosely, ``math_reward(rs, gs, workers=0, timeout_s=2)`` (see
        `RewardFunction`).
    Returns:
      `RewardOutput` with scores float32 [N] in {0, 1} and the counts of failures, timeouts,
      responses without an extractable answer (or an empty gold) and responses whose gold answer
      math-verify cannot parse (with one such row), which all score 0.
    Raises:
      ValueError: `responses` and `golds` differ in length.
      RuntimeError: the worker pool cannot start (see `pool.VerifierPool`).
    """
    responses, golds = inp.responses, inp.golds
    whole = cfg.extraction == "math_verify"
    options = (whole, cfg.float_rounding, cfg.numeric_precision, cfg.strict)
    gold_texts = [gold_answer_text(gold, cfg.gold_extraction) for gold in golds]
    unparsed = _unparsed_golds(sorted({g for g in gold_texts if g}), cfg)
    items: list[tuple] = []
    rows: list[int] = []
    bad_rows: list[int] = []
    for i, (response, gold_text) in enumerate(zip(responses, gold_texts)):
        if gold_text and gold_text in unparsed:
            bad_rows.append(i)
            continue
        answer = extract_answer(response, cfg)
        if answer is None or not gold_text:
            continue
        items.append((answer, gold_text, *options))
        rows.append(i)
    scores = np.zeros(len(responses), dtype=np.float32)
    counts = {"no_answer": len(responses) - len(rows) - len(bad_rows), "gold_unparsed": len(bad_rows),
              "gold_unparsed_row": bad_rows[0] if bad_rows else None}
    if not items:
        return RewardOutput(scores, **counts)
    if cfg.workers >= 1:
        result = get_pool(cfg.workers, cfg.start_method).map(verify_answer, items, cfg.timeout_s)
        for row, value, state in zip(rows, result.values, result.status):
            if state not in (FAILED, TIMEOUT):
                scores[row] = float(value)
        return RewardOutput(scores, failures=result.failures, timeouts=result.timeouts, **counts)
    return _in_process(items, rows, scores, cfg, counts)


def _main_thread_timeout(cfg: RewardConfig) -> int | None:
    """math-verify's own (signal.alarm) timeout in whole seconds on the main thread; None elsewhere."""
    return max(1, math.ceil(cfg.timeout_s)) if threading.current_thread() is threading.main_thread() else None


def _unparsed_golds(golds: list[str], cfg: RewardConfig) -> set[str]:
    """The gold texts math-verify cannot parse. One whose check times out counts as parsed: its
    verifications then time out (and are counted) like any other."""
    if not golds:
        return set()
    if cfg.workers >= 1:
        result = get_pool(cfg.workers, cfg.start_method).map(gold_parses, [(g,) for g in golds], cfg.timeout_s)
        return {g for g, value, state in zip(golds, result.values, result.status)
                if state == FAILED or (state == OK and not value)}
    from math_verify.errors import TimeoutException

    timeout = _main_thread_timeout(cfg)
    out = set()
    for gold in golds:
        try:
            if not gold_parses(gold, timeout):
                out.add(gold)
        except TimeoutException:
            continue
        except Exception:  # noqa: BLE001 - math-verify's parser raised: the gold is unusable
            out.add(gold)
    return out


def _in_process(items: list[tuple], rows: list[int], scores: np.ndarray, cfg: RewardConfig,
                counts: dict) -> RewardOutput:
    from math_verify.errors import TimeoutException

    timeout = _main_thread_timeout(cfg)
    failures = timeouts = 0
    for row, item in zip(rows, items):
        try:
            scores[row] = verify_answer(*item, timeout_s=timeout)
        except TimeoutException:
            timeouts += 1
        except Exception:  # a math-verify crash: scored 0 and counted
            failures += 1
    return RewardOutput(scores, failures=failures, timeouts=timeouts, **counts)
