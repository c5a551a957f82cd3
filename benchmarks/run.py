"""Runs every benchmark and writes one summary: ``summary.json`` and ``summary.md``.

Each benchmark runs in its own process (its own thread pools and memory) and writes its detailed
JSON next to the summary; the summary holds the machine, the library versions, the date, and each
headline figure with its median, spread (min and max over repeats) and, where the project set one,
its target and whether the run met it:

=================  =============================================================  ===============
benchmark          headline figures                                               target
=================  =============================================================  ===============
bench_train        Flax update vs transformers + torch AdamW, tokens/s ratio;     >= 1.3x; MFU
                   model FLOPs utilisation against the measured matmul peak       >= 50% on 43M
bench_rollout      ``generate`` vs transformers ``generate()``, tokens/s ratio     >= 3x
bench_model        chunked vs naive token statistics, peak temporary memory        <= 1/8
bench_iteration    a whole RL iteration vs a plain PyTorch loop, time ratio       (reported)
bench_losses       the loss core (forward + gradient) per preset                  (reported)
bench_rewards      math-verify rewards per second, in process and in a pool        (reported)
bench_mesh         update step time per device-mesh shape                         (reported)
bench_peers        the same GRPO job on TRL and Tunix, step time ratio vs          >= 1.2x TRL,
                   sspo_jax (summary only: ``make bench-peers`` runs it)           >= 1.5x Tunix
=================  =============================================================  ===============

``--profile full`` is the published configuration (about 15 minutes on a 2-core CPU; run it on a
quiet machine: PyTorch's thread pool degrades badly when another process takes a core);
``--profile smoke`` runs everything at toy sizes for the tests. On a GPU machine the same command
runs the GPU configuration (a 0.5B-shaped model in bf16) and tags the output with the device name.
``--readme`` replaces the table between the benchmark markers in README.md with ``summary.md``::

    .venv/bin/python benchmarks/run.py [--profile full] [--only train,rollout] [--readme]
    .venv/bin/python benchmarks/run.py --summarize-only --out benchmarks/results   # rebuild the summary
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_info  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
README = REPO / "README.md"
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"

# name -> (result file, arguments per profile); "{out}" is the output directory.
PROFILES: dict[str, dict[str, list[str]]] = {
    "train": {
        "full": ["--configs", "5M,43M", "--batch", "8", "--seq-len", "256", "--repeats", "5"],
        "gpu": ["--configs", "0.5B", "--batch", "8", "--seq-len", "1024", "--dtype", "bfloat16", "--repeats", "10",
                "--warmup", "2", "--chunk", "1024", "--extra-presets", "sspo"],
        "smoke": ["--configs", "tiny", "--batch", "2", "--seq-len", "32", "--repeats", "1", "--warmup", "0"],
    },
    "rollout": {
        "full": ["--configs", "small,large", "--batches", "8,64", "--repeats", "3"],
        "gpu": ["--configs", "small,large,0.5B", "--batches", "8,64", "--repeats", "5"],
        "smoke": ["--configs", "tiny", "--batches", "2", "--prompt-len", "8", "--new-tokens", "4", "--repeats", "1"],
    },
    "model": {
        "full": ["--configs", "5M,43M", "--repeats", "3"],
        "smoke": ["--configs", "5M", "--batch", "1", "--seq-len", "16", "--repeats", "1", "--mem-seq-len", "256",
                  "--mem-chunk", "64"],
    },
    "iteration": {
        "full": ["--batch-size", "16", "--iterations", "5"],
        "gpu": ["--batch-size", "32", "--iterations", "5"],
        "smoke": ["--batch-size", "2", "--max-new-tokens", "8", "--warmup", "1", "--iterations", "1"],
    },
    "losses": {
        "full": ["--batch", "64", "--seq", "4096", "--repeats", "5"],
        "gpu": ["--batch", "64", "--seq", "4096", "--repeats", "10"],
        "smoke": ["--batch", "2", "--seq", "64", "--repeats", "1", "--presets", "sspo,grpo"],
    },
    "rewards": {
        "full": ["--n", "1024", "--repeats", "5"],
        "smoke": ["--n", "16", "--repeats", "1", "--workers", "0"],
    },
    "mesh": {
        "full": [],
        "smoke": ["--smoke"],
    },
}
# The benchmarks whose --out takes a file path rather than a directory.
_FILE_OUT = {"model", "rewards"}


def _run_one(name: str, profile: str, out: Path, timeout_s: float) -> dict[str, Any]:
    script = BENCH_DIR / f"bench_{name}.py"
    target = out / f"{name}.json" if name in _FILE_OUT else out
    cmd = [sys.executable, str(script), *PROFILES[name][profile], "--out", str(target)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    status = {"command": " ".join(cmd[1:]), "wall_s": round(time.perf_counter() - t0, 1),
              "returncode": proc.returncode}
    if proc.returncode != 0:
        status["stderr_tail"] = proc.stderr[-3000:]
    return status


# ---- headline figures -------------------------------------------------------------------------

def _fig(name: str, value: float, unit: str, *, spread: tuple[float, float] | None = None,
         target: str | None = None, met: bool | None = None, note: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "value": value, "unit": unit}
    if spread is not None:
        out["min"], out["max"] = spread
    if target is not None:
        out["target"], out["met"] = target, met
    if note:
        out["note"] = note
    return out


def _ratio_spread(a: dict, b: dict, key: str = "tokens_per_s") -> tuple[float, float]:
    """(worst, best) of a/b from each side's min and max throughput."""
    return a[f"{key}_min"] / b[f"{key}_max"], a[f"{key}_max"] / b[f"{key}_min"]


def figures_train(d: dict) -> list[dict]:
    pre = d["args"]["preset"]
    peak = d["matmul_peak"]
    out = [_fig(f"matmul peak ({peak['dtype']}, n={peak['n']})", peak["flops_per_s_median"] / 1e9, "GFLOP/s",
                spread=(peak["flops"] / max(peak["seconds"]) / 1e9, peak["flops_per_s_max"] / 1e9))]
    for r in d["results"]:
        f, t = r[f"flax_{pre}"], r["torch"]
        tag = f"{r['config']}, B={r['batch']} T={r['seq_len']}, {r['dtype']}"
        out.append(_fig(f"train step tokens/s, flax / torch ({tag})", r["ratio_flax_over_torch"], "x",
                        spread=_ratio_spread(f, t), target=">= 1.3", met=r["ratio_flax_over_torch"] >= 1.3,
                        note=f"flax {f['tokens_per_s_median']:.0f} tok/s, torch {t['tokens_per_s_median']:.0f} tok/s"))
        large = r["config"] in ("43M", "0.5B")
        out.append(_fig(f"train step MFU, flax ({tag})", 100 * f["mfu"], "% of matmul peak",
                        target=">= 50" if large else None, met=(f["mfu"] >= 0.5) if large else None,
                        note=f"torch {100 * t['mfu']:.1f}%"))
        for key in [k for k in r if k.startswith("flax_") and k != f"flax_{pre}"]:
            out.append(_fig(f"train step tokens/s, flax {key[5:]} / flax {pre} ({tag})",
                            r[key]["tokens_per_s_median"] / f["tokens_per_s_median"], "x",
                            note="the cost of the preset's extra loss terms over the same forward and backward"))
    return out


def figures_rollout(d: dict) -> list[dict]:
    out = []
    for r in d["results"]:
        out.append(_fig(f"generate tokens/s, flax / transformers ({r['config']}, B={r['batch']}, "
                        f"{r['new_tokens']} new, {r['sampling']})", r["ratio_flax_over_torch"], "x",
                        spread=_ratio_spread(r["flax"], r["torch"]), target=">= 3",
                        met=r["ratio_flax_over_torch"] >= 3,
                        note=f"flax {r['flax']['tokens_per_s_median']:.0f} tok/s, "
                             f"transformers {r['torch']['tokens_per_s_median']:.0f} tok/s"))
    return out


def figures_model(d: dict) -> list[dict]:
    m = d["token_stats_memory"]
    ratio = m["chunked"]["forward_backward_temp_bytes"] / m["naive"]["forward_backward_temp_bytes"]
    return [_fig(f"token stats peak memory, chunked / naive (T={m['seq_len']}, V={m['vocab']})", ratio, "x",
                 target="<= 0.125", met=ratio <= 0.125,
                 note=f"{m['chunked']['forward_backward_temp_bytes'] / 2**30:.2f} GiB vs "
                      f"{m['naive']['forward_backward_temp_bytes'] / 2**30:.2f} GiB")]


def figures_iteration(d: dict) -> list[dict]:
    s, t = d["sspo_jax"]["iteration"], d["torch"]["iteration"]
    ratio = d["ratio_iteration_time_torch_over_sspo_jax"]
    return [_fig(f"RL iteration time, torch loop / sspo_jax ({d['rows_per_iteration']} rows, tiny model)", ratio, "x",
                 spread=(t["min_s"] / s["max_s"], t["max_s"] / s["min_s"]),
                 note=f"sspo_jax {s['median_s']:.2f} s, torch {t['median_s']:.2f} s per iteration")]


def figures_losses(d: dict) -> list[dict]:
    out = []
    for r in d["results"]:
        lg = r["loss_and_grad"]
        out.append(_fig(f"loss + gradient, {r['preset']} (B={d['batch']}, T={d['seq']})", 1e3 * lg["median_s"], "ms",
                        spread=(1e3 * lg["min_s"], 1e3 * lg["max_s"])))
    return out


def figures_rewards(d: dict) -> list[dict]:
    out = []
    for mode, r in d["results"].items():
        out.append(_fig(f"math rewards per second ({mode.replace('_', ' ')})", r["rewards_per_s_median"], "1/s",
                        spread=(r["rewards_per_s_min"], r["rewards_per_s_max"])))
    return out


def figures_mesh(d: dict) -> list[dict]:
    out = []
    for r in d.get("results", []):
        t = r.get("update") or r.get("step") or {}
        if "median_s" in t:
            out.append(_fig(f"update step, mesh {r.get('mesh')}", 1e3 * t["median_s"], "ms",
                            spread=(1e3 * t["min_s"], 1e3 * t["max_s"]) if "min_s" in t else None))
    return out


def figures_peers(d: dict) -> list[dict]:
    """bench_peers.py (summary only: `make bench-peers` runs it, since it builds the peer venvs):
    whole-step seconds per framework and preset, then each ratio vs its target, or the reason the
    ratio was refused in the peer's row."""
    out = []
    for preset, entry in d["presets"].items():
        spec = entry["spec"]
        variant = spec.get("peer_variant", preset)
        job = (f"{preset} preset{'' if variant == preset else f', peers {variant}'}, "
               f"{spec['batch_size']}x{spec['group_size']} rows, {spec['max_new_tokens']} new, tiny model")
        for name, s in entry["frameworks"].items():
            if "error" in s:  # a failed job: its reason is in peers.json
                continue
            note = (f"generate+reward {s['generate_and_reward']['median_s']:.2f}, extra forwards "
                    f"{s['extra_forward']['median_s']:.2f}, update {s['update']['median_s']:.2f} s; "
                    f"reward {s['reward_mean']:.3f} +- {s['reward_se']:.3f}")
            refused = entry["ratios"].get(f"{name}_step / sspo_jax_step", {}).get("ratios_refused")
            if refused:
                note += f"; ratio refused: {refused}"
            out.append(_fig(f"RL step time, {name} ({job})", s["step"]["median_s"], "s",
                            spread=(s["step"]["min_s"], s["step"]["max_s"]), note=note))
            util = s.get("update_utilisation")
            if util:
                out.append(_fig(f"update model FLOP/s over valid tokens / matmul peak, {name} ({job})",
                                100 * util["fraction_of_peak"], "% of matmul peak", target=util["target"],
                                met=util["met"],
                                note=f"peak {util['matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s in the job's process; "
                                     f"{100 * util['padding_computed_frac']:.0f}% of the computed tokens are padding"))
        for key, r in entry["ratios"].items():
            if "ratio" in r:
                out.append(_fig(f"{key} ({job})", r["ratio"], "x", spread=(r["min"], r["max"]),
                                target=r.get("target"), met=r.get("met"), note="> 1: sspo_jax is faster"))
    return out


FIGURES: dict[str, Callable[[dict], list[dict]]] = {
    "train": figures_train, "rollout": figures_rollout, "model": figures_model, "iteration": figures_iteration,
    "losses": figures_losses, "rewards": figures_rewards, "mesh": figures_mesh,
    "peers": figures_peers,  # summary only: not in PROFILES, so `make bench` never builds the peer venvs
}


def summarize(out: Path, runs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Reads every ``<name>.json`` under `out` and returns the summary (also written to disk)."""
    summary: dict[str, Any] = {"machine": machine_info(), "benchmarks": {}, "figures": []}
    for name, extract in FIGURES.items():
        path = out / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        entry: dict[str, Any] = {"file": path.name, "date": data.get("date") or data.get("machine", {}).get("date"),
                                 "cpu_model": data.get("machine", {}).get("cpu_model")}
        if runs and name in runs:
            entry["run"] = runs[name]
        try:
            figs = extract(data)
        except (KeyError, TypeError, ZeroDivisionError) as err:
            entry["error"] = f"could not read {path.name}: {type(err).__name__}: {err}"
            figs = []
        for f in figs:
            f["benchmark"] = name
        summary["benchmarks"][name] = entry
        summary["figures"].extend(figs)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    return summary


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def _cpu_line(summary: dict[str, Any]) -> list[str]:
    """One line naming each benchmark's CPU when they ran on different CPU models (ratios measured
    on different machines are not comparable with each other), else nothing."""
    cpus = {name: e.get("cpu_model") or "an unrecorded CPU" for name, e in summary["benchmarks"].items()}
    if len(set(cpus.values())) <= 1:
        return []
    return ["", "They ran on different CPUs: " + ", ".join(f"{n} on {c}" for n, c in cpus.items()) + "."]


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a markdown table (one row per figure)."""
    m = summary["machine"]
    device = m.get("device", "?")
    if device == "cpu":
        device = f"CPU {m.get('cpu_model', '?')}"
    elif m.get("cpu_model"):
        device = f"{device} (host CPU {m['cpu_model']})"
    lines = [f"Measured on {device} ({m.get('cpu_count')} CPUs, {m.get('platform', '?')}), "
             f"jax {m['versions'].get('jax', '?')}, torch {m['versions'].get('torch', '?')}, "
             f"transformers {m['versions'].get('transformers', '?')}; summary written {m['date']}.", "",
             "Each benchmark's own run date: " + ", ".join(
                 f"{name} {str(entry.get('date') or '?')[:10]}" for name, entry in summary["benchmarks"].items())
             + ".", *_cpu_line(summary), "",
             "| benchmark | figure | median | min - max | target | met |",
             "| --- | --- | --- | --- | --- | --- |"]
    for f in summary["figures"]:
        spread = f"{_num(f['min'])} - {_num(f['max'])}" if "min" in f else ""
        met = "" if f.get("met") is None else ("yes" if f["met"] else "**no**")
        name = f["name"] + (f" ({f['note']})" if f.get("note") else "")
        lines.append(f"| {f['benchmark']} | {name} | {_num(f['value'])} {f['unit']} | {spread} | "
                     f"{f.get('target', '')} | {met} |")
    return "\n".join(lines) + "\n"


def update_readme(table_md: str, readme: Path = README) -> None:
    """Replaces the text between the benchmark markers of the README with `table_md`."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"error: {readme} has no '{START}' ... '{END}' markers to write the table between")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table_md}{END}{tail}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=("full", "gpu", "smoke"), default=None,
                    help="benchmark sizes (default: gpu on a GPU machine, else full)")
    ap.add_argument("--only", default=None, help=f"comma list of {sorted(PROFILES)}")
    ap.add_argument("--out", default=None, help="output directory (default benchmarks/results, or "
                                                "benchmarks/results/<device> for the gpu profile)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    ap.add_argument("--summarize-only", action="store_true", help="rebuild summary.json/.md from existing results")
    ap.add_argument("--readme", action="store_true", help="write summary.md into README.md between the markers")
    args = ap.parse_args(argv)
    profile = args.profile
    if profile is None:
        import jax
        profile = "gpu" if jax.default_backend() == "gpu" else "full"
    if args.out:
        out = Path(args.out)
    elif profile == "gpu":
        import jax
        out = RESULTS_DIR / jax.devices()[0].device_kind.replace(" ", "_")
    else:
        out = RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    available = [n for n, p in PROFILES.items() if profile in p]  # CPU-only benchmarks have no gpu profile
    names = [n.strip() for n in (args.only or ",".join(available)).split(",") if n.strip()]
    unknown = sorted(set(names) - set(available))
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown} for profile {profile!r}; choose from {available}")
    runs: dict[str, Any] = {}
    if not args.summarize_only:
        for name in names:
            print(f"[run] bench_{name} ({profile}) ...", flush=True)
            try:
                runs[name] = _run_one(name, profile, out, args.timeout)
            except subprocess.TimeoutExpired:
                runs[name] = {"returncode": None, "error": f"timed out after {args.timeout:.0f} s"}
            status = runs[name]
            print(f"[run] bench_{name}: exit {status.get('returncode')} in {status.get('wall_s', '?')} s", flush=True)
            if status.get("returncode") != 0:
                print(status.get("stderr_tail") or status.get("error"), file=sys.stderr, flush=True)
    summary = summarize(out, runs)
    summary["profile"] = profile
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = (out / "summary.md").read_text()
    print(table)
    if args.readme:
        update_readme(table)
        print(f"[run] README.md table updated from {out / 'summary.md'}")
    failed = [n for n, s in runs.items() if s.get("returncode") != 0]
    if failed:
        print(f"[run] failed: {failed}", file=sys.stderr)
    summary["failed"] = failed
    return summary


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
