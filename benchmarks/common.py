"""Shared helpers for the benchmarks: machine description, timing with repeats, JSON output."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers")


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Host, accelerator and library versions, recorded with every result file."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {},
    }
    for pkg in _PACKAGES:
        try:
            info["versions"][pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        import jax

        info["jax_backend"] = jax.default_backend()
        info["device"] = str(jax.devices()[0].device_kind)
        info["device_count"] = jax.device_count()
    except Exception as err:  # noqa: BLE001 - a benchmark without JAX still records the host
        info["jax_backend"] = f"unavailable: {err}"
    return info


def time_repeats(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median, min, max and standard deviation (seconds) of `repeats` calls after `warmup` calls.

    `fn` must block until its work is done (call `.block_until_ready()` on JAX outputs).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "stdev_s": statistics.stdev(times) if len(times) > 1 else 0.0,
        "repeats": repeats,
    }


def timed_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall-clock seconds of each of `repeats` calls of `fn` (which must block until done)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summarize_times(times: list[float], tokens: int | None = None) -> dict[str, Any]:
    """The raw `times` with their median, min, max and standard deviation; with `tokens` (per
    call) also tokens/s at the median, slowest and fastest call."""
    med = statistics.median(times)
    out: dict[str, Any] = {"seconds": times, "median_s": med, "min_s": min(times), "max_s": max(times),
                           "stdev_s": statistics.stdev(times) if len(times) > 1 else 0.0,
                           "repeats": len(times)}
    if tokens is not None:
        out.update(tokens_per_s_median=tokens / med, tokens_per_s_min=tokens / max(times),
                   tokens_per_s_max=tokens / min(times))
    return out


def write_json(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Writes ``{"machine": ..., **payload}`` to ``benchmarks/results/<name>.json``."""
    out_dir = RESULTS_DIR if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({"machine": machine_info(), **payload}, indent=2, sort_keys=False) + "\n")
    return path
