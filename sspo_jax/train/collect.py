"""Collecting one batch of scored rows: a single draw, or DAPO's dynamic sampling.

    scored, metrics = collect_batch(draw, need=prompts, group_size=G, dynamic=True, max_rounds=3)

`draw(round)` samples and scores the next prompt batch (this process's rows). With dynamic
sampling (ALGORITHMS.md 4) groups whose scores are all equal are dropped and further batches are
drawn until `need` groups with reward variance are kept or `max_rounds` draws were made; the
remaining places are filled with dropped groups whose response mask is zeroed, so they train on
nothing but keep every shape static (counted as ``dynamic_sampling/filler_groups``). In a
multi-process job each process fills its own share and the rounds go on until every process has.

The score is ``algorithm.dynamic_sampling_metric``: the correctness ``correct`` by default (verl's
DAPO recipe filters on accuracy: a group whose responses are all right or all wrong carries no
correctness signal even when the overlong penalty makes their total rewards differ), or the total
``reward``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from sspo_jax.parallel.host_data import all_processes, per_process, reduce_metrics
from sspo_jax.train.records import ScoredRollout, concat, take_rows, widen


def _group_rows(groups: np.ndarray, g: int) -> np.ndarray:
    return (groups[:, None] * g + np.arange(g)).ravel()


def collect_batch(draw: Callable[[int], ScoredRollout], *, need: int, group_size: int, dynamic: bool,
                  max_rounds: int = 1, metric: str = "correct") -> tuple[ScoredRollout, dict[str, float]]:
    """This process's scored rows of one training batch.

    Args:
      draw: ``draw(round) -> ScoredRollout`` of the next prompt batch (its rows whole groups of
        `group_size` consecutive rows).
      need: groups (prompts) this process must deliver.
      group_size: G.
      dynamic: keep only groups with reward variance (DAPO); False returns ``draw(0)`` as is.
      max_rounds: the cap on draws with `dynamic`.
      metric: the per-row score that must vary inside a kept group: ``correct`` (``roll.correct``)
        or ``reward`` (``roll.rewards``); see ``AlgorithmConfig.dynamic_sampling_metric``.
    Returns:
      (the scored rows, ``need * group_size`` of them with `dynamic`; metrics
      ``dynamic_sampling/rounds``, ``kept_groups``, ``filler_groups`` (summed over processes) with
      `dynamic`, none without).
    """
    if not dynamic:
        return draw(0), {}
    if metric not in ("correct", "reward"):
        raise ValueError(f"dynamic sampling metric {metric!r} is not one of ['correct', 'reward']")
    g = group_size
    kept: list[ScoredRollout] = []
    dropped: list[ScoredRollout] = []
    n_kept = rounds = 0
    while rounds < max_rounds and not all_processes(n_kept >= need):
        roll = draw(rounds)
        rounds += 1
        r = np.asarray(roll.correct if metric == "correct" else roll.rewards).reshape(-1, g)
        varied = np.flatnonzero(r.max(axis=1) != r.min(axis=1))
        take = varied[:need - n_kept]
        if take.size:
            kept.append(take_rows(roll, _group_rows(take, g)))
            n_kept += take.size
        rest = np.setdiff1d(np.arange(r.shape[0]), take)
        if rest.size:
            dropped.append(take_rows(roll, _group_rows(rest, g)))
    filler = 0
    if n_kept < need:  # the cap was reached: fill with masked-out groups (they train on nothing)
        filler = need - n_kept
        pad = take_rows(concat(dropped), np.arange(filler * g))
        kept.append(dataclasses.replace(pad, response_mask=np.zeros_like(pad.response_mask)))
    roll = concat(kept)
    width = int(per_process(np.asarray(roll.prompt_width)).max())  # one global array width
    roll = widen(roll, width)
    counts = reduce_metrics({"dynamic_sampling/kept_groups": float(n_kept),
                             "dynamic_sampling/filler_groups": float(filler)}, sum_suffixes=("_groups",))
    return roll, {"dynamic_sampling/rounds": float(rounds), **counts}
