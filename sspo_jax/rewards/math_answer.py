"""The math answer reward: extract the final answer, compare it with the gold one via math-verify.

Verification runs in the shared process pool (`pool.py`, ``cfg.workers >= 1``) with a per-item
time limit enforced by the parent, or in the calling process (``cfg.workers == 0``): on the main
thread math-verify's own signal-based timeout applies (whole seconds, rounded up); off the main
thread it cannot (signal.alarm), so it is disabled there and an item has no time limit: use the
pool from threads. Timeouts and verifier crashes score 0 and are counted, never silent.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np

from sspo_jax.rewards.config import RewardConfig, make_config
from sspo_jax.rewards.extract import extract_answer, gold_answer_text
from sspo_jax.rewards.output import RewardOutput
from sspo_jax.rewards.pool import FAILED, TIMEOUT, get_pool
from sspo_jax.rewards.verify import verify_answer


def _check_lengths(responses: Sequence[str], golds: Sequence[str]) -> None:
    if len(responses) != len(golds):
        raise ValueError(f"got {len(responses)} responses but {len(golds)} gold answers; "
                         "repeat each gold once per sampled response")


def math_reward(
    responses: Sequence[str],
    golds: Sequence[str],
    *,
    metas: Sequence[dict] | None = None,
    response_lengths: np.ndarray | None = None,
    truncated: np.ndarray | None = None,
    cfg: RewardConfig | None = None,
    **overrides: object,
) -> RewardOutput:
    """1.0 where a response's final answer is equivalent to its gold answer, else 0.0.

    Args:
      responses: N decoded responses.
      golds: N gold answers (GSM8K ``... #### 18``, ``\\boxed{}`` or bare text; see
        `RewardConfig.gold_extraction`).
      metas, response_lengths, truncated: unused (the registry's uniform signature).
      cfg: settings (default `RewardConfig()`); `overrides` replace single fields, e.g.
        ``math_reward(rs, gs, workers=0, timeout_s=2)``.
    Returns:
      `RewardOutput` with scores float32 [N] in {0, 1} and the counts of failures, timeouts and
      responses without an extractable answer (or an empty gold), which all score 0.
    Raises:
      ValueError: `responses` and `golds` differ in length.
      RuntimeError: the worker pool cannot start (see `pool.VerifierPool`).
    """
    del metas, response_lengths, truncated
    cfg = make_config(cfg, **overrides)
    _check_lengths(responses, golds)
    whole = cfg.extraction == "math_verify"
    options = (whole, cfg.float_rounding, cfg.numeric_precision, cfg.strict)
    items: list[tuple] = []
    rows: list[int] = []
    for i, (response, gold) in enumerate(zip(responses, golds)):
        answer = extract_answer(response, cfg)
        gold_text = gold_answer_text(gold, cfg.gold_extraction)
        if answer is None or not gold_text:
            continue
        items.append((answer, gold_text, *options))
        rows.append(i)
    scores = np.zeros(len(responses), dtype=np.float32)
    no_answer = len(responses) - len(rows)
    if not items:
        return RewardOutput(scores, no_answer=no_answer)
    if cfg.workers >= 1:
        result = get_pool(cfg.workers, cfg.start_method).map(verify_answer, items, cfg.timeout_s)
        for row, value, state in zip(rows, result.values, result.status):
            if state not in (FAILED, TIMEOUT):
                scores[row] = float(value)
        return RewardOutput(scores, failures=result.failures, timeouts=result.timeouts, no_answer=no_answer)
    return _in_process(items, rows, scores, cfg, no_answer)


def _in_process(items: list[tuple], rows: list[int], scores: np.ndarray, cfg: RewardConfig,
                no_answer: int) -> RewardOutput:
    from math_verify.errors import TimeoutException

    on_main = threading.current_thread() is threading.main_thread()
    timeout = max(1, math.ceil(cfg.timeout_s)) if on_main else None
    failures = timeouts = 0
    for row, item in zip(rows, items):
        try:
            scores[row] = verify_answer(*item, timeout_s=timeout)
        except TimeoutException:
            timeouts += 1
        except Exception:  # a math-verify crash: scored 0 and counted
            failures += 1
    return RewardOutput(scores, failures=failures, timeouts=timeouts, no_answer=no_answer)
