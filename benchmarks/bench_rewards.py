"""Benchmark: math-reward throughput (rewards/s) for 1024 completions, process pool vs in-process.

The completions mix the built-in arithmetic task's worked solutions (right and wrong answers)
with MATH-style answers (fractions, percents, radicals, sets, intervals, polynomials). Each mode
runs once to warm up (pool start-up, imports), then `--repeats` timed times; the JSON written to
``benchmarks/results/rewards.json`` has the median, spread (min, max, interquartile range) per
mode, the machine, library versions and the date.

    .venv/bin/python benchmarks/bench_rewards.py [--n 1024] [--repeats 5] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu_model  # noqa: E402

MATH_STYLE = [
    ("The answer is \\boxed{\\frac{1}{2}}.", "0.5"),
    ("The answer is \\boxed{50\\%}.", "0.5"),
    ("The answer is \\boxed{2\\sqrt{2}}.", "\\sqrt{8}"),
    ("The answer is \\boxed{\\{1,2,3\\}}.", "\\{3,2,1\\}"),
    ("The answer is \\boxed{[1,2)}.", "(1,2]"),
    ("The answer is \\boxed{x^2+2x+1}.", "(x+1)^2"),
    ("The answer is \\boxed{\\frac{\\sqrt{3}}{2}}.", "\\sin(\\pi/3)"),
    ("The answer is \\boxed{1,234}.", "#### 1234"),
]


def completions(n: int) -> tuple[list[str], list[str]]:
    """`n` (response, gold) pairs: half arithmetic solutions (every other one wrong), half MATH style."""
    from sspo_jax.data import problems

    items = problems(n, seed=0)
    responses, golds = [], []
    for i, item in enumerate(items):
        if i % 2 == 0:
            response, gold = MATH_STYLE[(i // 2) % len(MATH_STYLE)]
        elif i % 4 == 1:
            response, gold = item["solution"], item["answer"]
        else:
            response, gold = item["solution"], str(int(item["answer"]) + 1)
        responses.append(response)
        golds.append(gold)
    return responses, golds


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run(n: int, repeats: int, workers_list: list[int], timeout_s: float) -> dict:
    from sspo_jax.rewards import close, math_reward

    responses, golds = completions(n)
    results = {}
    reference = None
    for workers in workers_list:
        first = math_reward(responses, golds, workers=workers, timeout_s=timeout_s)  # warm-up
        if reference is None:
            reference = first.scores
        agree = bool(np.array_equal(first.scores, reference))
        rates, failures, timeouts = [], 0, 0
        for _ in range(repeats):
            start = time.perf_counter()
            out = math_reward(responses, golds, workers=workers, timeout_s=timeout_s)
            rates.append(n / (time.perf_counter() - start))
            failures += out.failures
            timeouts += out.timeouts
        q1, _, q3 = statistics.quantiles(rates, n=4) if len(rates) > 1 else (rates[0],) * 3
        name = "in_process" if workers == 0 else f"pool_{workers}_workers"
        results[name] = {
            "workers": workers,
            "rewards_per_s_median": statistics.median(rates),
            "rewards_per_s_min": min(rates),
            "rewards_per_s_max": max(rates),
            "rewards_per_s_iqr": q3 - q1,
            "rewards_per_s_all": rates,
            "mean_score": float(first.scores.mean()),
            "scores_match_first_mode": agree,
            "failures": failures,
            "timeouts": timeouts,
        }
        print(f"{name:>20}: {results[name]['rewards_per_s_median']:8.1f} rewards/s "
              f"(min {min(rates):.1f}, max {max(rates):.1f})", flush=True)
    close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024, help="completions per call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per mode")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="modes to run; 0 = in-process (default: 0, 1, 2 and the CPU count if larger)")
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "rewards.json"))
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    workers_list = args.workers if args.workers is not None else sorted({0, 1, 2, cpus})
    results = run(args.n, args.repeats, workers_list, args.timeout_s)
    report = {
        "benchmark": "math_reward throughput, process pool vs in-process",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {"n_completions": args.n, "repeats": args.repeats, "timeout_s": args.timeout_s,
                   "start_method": "spawn", "note": "gold parses are cached per process; timed calls "
                   "follow one warm-up call per mode"},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_model": cpu_model(), "cpu_count": cpus, "python": sys.version.split()[0],
                    "load_average_1_5_15min_at_end": list(os.getloadavg())},
        "versions": {name: version(name) for name in ("sspo-jax", "math-verify", "sympy", "latex2sympy2_extended",
                                                        "numpy")},
        "results": results,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
