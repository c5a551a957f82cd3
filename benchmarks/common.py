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


def model_flops_per_token(spec: dict, seq_len: int) -> dict:
    """Training FLOPs per token of one forward + backward (the 6N rule plus causal attention) of a
    decoder with the Hugging Face config keys of `spec`."""
    h, hi, n_layers = spec["hidden_size"], spec["intermediate_size"], spec["num_hidden_layers"]
    hq, hkv = spec["num_attention_heads"], spec["num_key_value_heads"]
    d = spec.get("head_dim") or h // hq
    per_layer = h * hq * d + 2 * h * hkv * d + hq * d * h + 3 * h * hi  # q, k, v, o, gate, up, down
    matmul_params = n_layers * per_layer + spec["vocab_size"] * h  # + the LM head
    dense = 6 * matmul_params
    attention = 6 * n_layers * hq * d * seq_len  # 12 * L * Hq * D * T, halved by the causal mask
    return {"matmul_params": matmul_params, "dense": dense, "attention": attention, "total": dense + attention}


def rows_model_flops(spec: dict, lengths) -> float:
    """Training FLOPs of one forward + backward over rows of `lengths` valid tokens each (padding
    not counted): `model_flops_per_token` summed over every row's tokens at that row's length."""
    per = model_flops_per_token(spec, 1)  # attention per token grows linearly with the row's length
    return float(sum(per["dense"] * n + per["attention"] * n * n for n in lengths))


def cpu_model() -> str:
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
        "cpu_model": cpu_model(),
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


def measure_matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> dict:
    """FLOP/s of an [n, n] @ [n, n] product through JAX (median over repeats)."""
    import jax
    import jax.numpy as jnp

    dt = jnp.dtype(dtype)
    key1, key2 = jax.random.split(jax.random.key(1))
    a = jax.random.normal(key1, (n, n), jnp.float32).astype(dt)
    b = jax.random.normal(key2, (n, n), jnp.float32).astype(dt)
    f = jax.jit(lambda x, y: jnp.dot(x, y, precision="highest", preferred_element_type=dt))
    f(a, b).block_until_ready()
    times = timed_calls(lambda: f(a, b).block_until_ready(), repeats)
    flops = 2.0 * n ** 3
    med = statistics.median(times)
    return {"n": n, "dtype": dtype, "seconds": times, "median_s": med, "flops": flops,
            "flops_per_s_median": flops / med, "flops_per_s_max": flops / min(times)}


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
