"""Rollout benchmark: tokens/s of `sspo_jax.rollout.generate` vs transformers' `generate()` on CPU.

Both sides run the same Qwen2 config with the same weights (the Flax model is initialised, exported
with `save_pretrained` to a temporary directory and loaded by transformers' PyTorch
`Qwen2ForCausalLM` in fp32, `torch.set_num_threads(os.cpu_count())`). Prompts are random token ids,
all real (no padding), `--prompt-len` 32 wide; both sides generate exactly `--new-tokens` 64 tokens
(Flax: `eos_token_ids=()`; transformers: `min_new_tokens = max_new_tokens`, no EOS id). Decoding
mode (`--sampling`) is the same on both sides: greedy (default) or plain sampling at temperature 1
(no top-k / top-p on either side).

Per (config, batch) it records, for JAX, the first call (trace + compile + one run) separately from
the steady state; for both sides the median / min / max / stdev over `--repeats` timed calls (after
one warm-up call; the two sides alternate call by call, so both see the same load),
tokens/s = batch * new_tokens / median time, the flax/torch ratio of the medians and the median of
the per-round paired ratios ("paired"), a work floor (`work_floor`: matmul FLOPs at this host's
measured sgemm rate and, per decode step, the fp32 weight bytes at its measured streaming
bandwidth; "floor x" = flax time / floor, "max@floor" = torch time / floor, the best ratio any
fp32 implementation could reach against this torch run), and a rough
"where the time goes" figure: the time of one vocabulary projection + token choice per decode step
times the number of steps, as a fraction of the whole `generate`. In greedy mode it also records
how many generated tokens the two sides agree on (a sanity check of "same weights", not asserted:
fp32 near-ties may flip an argmax and the rows diverge from there).

The host may be shared: the JSON records the load average (`os.getloadavg()`) before and after each
measurement and, per timed call, the Linux CPU pressure (PSI "some": % of the wall time in which
some task on the machine waited for a CPU). PyTorch's OpenMP threads suffer far more than XLA's
thread pool when another process takes a core, so compare the two sides on calls with low pressure
and look at the min-max spread, not only the median.

Configs: "small" and "large" are bench_model's "5M" (vocab 4096) and "43M" (vocab 151936) specs;
"tiny" (hidden 32, vocab 256) is for the smoke test. Writes ``benchmarks/results/rollout.json``.

    .venv/bin/python benchmarks/bench_rollout.py [--repeats 3] [--configs small,large] [--batches 8,64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_model import CONFIGS as MODEL_CONFIGS  # noqa: E402
from common import RESULTS_DIR, summarize_times, write_json  # noqa: E402

from sspo_jax.models import Qwen2Config, Qwen2ForCausalLM, save_pretrained  # noqa: E402
from sspo_jax.rollout import SamplingConfig, generate, trace_count  # noqa: E402
from sspo_jax.rollout.sampling import sample_token  # noqa: E402

CONFIGS = {
    "tiny": dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "small": MODEL_CONFIGS["5M"],
    "large": MODEL_CONFIGS["43M"],
    # Qwen2.5-0.5B's shape, for GPUs (--dtype bfloat16)
    "0.5B": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
}
DEVICE = "cpu"  # the torch device: "cuda" when JAX runs on a GPU (set in main)
DTYPE = "float32"  # compute dtype of both sides (--dtype)
ALIASES = {"5M": "small", "43M": "large"}


def _cpu_stall_us() -> float | None:
    """Linux PSI: total microseconds some task waited for a CPU (None where unavailable)."""
    try:
        with open("/proc/pressure/cpu") as fh:
            return float(fh.readline().split("total=")[1])
    except (OSError, IndexError, ValueError):
        return None


def _timed(fn, repeats: int, stalls: list | None = None) -> list[float]:
    """Wall times of `repeats` calls; appends each call's CPU-pressure % (PSI "some") to `stalls`."""
    out = []
    for _ in range(repeats):
        s0 = _cpu_stall_us()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
        s1 = _cpu_stall_us()
        if stalls is not None and s0 is not None and s1 is not None:
            stalls.append(round(100 * (s1 - s0) / 1e6 / out[-1], 1))
    return out


def build_models(spec: dict, seed: int = 0):
    """The Flax policy and the transformers model with the same weights (via save_pretrained).

    With ``DTYPE == "bfloat16"`` both sides hold and compute in bf16; the torch model sits on ``DEVICE``.
    """
    cfg = Qwen2Config(**spec, max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1_000_000.0)
    bf16 = DTYPE == "bfloat16"
    model = Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(seed), param_dtype=jnp.bfloat16 if bf16 else jnp.float32)
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(model, d)
        hf = transformers.Qwen2ForCausalLM.from_pretrained(d, dtype=torch.bfloat16 if bf16 else torch.float32)
    hf = hf.to(DEVICE)
    hf.eval()
    return model, hf


def _head_step_fns(model, hf, b: int, mode: str, rng_seed: int = 0):
    """One vocabulary projection + token choice on [B, H] hidden states, for each side."""
    h_np = np.random.default_rng(rng_seed).standard_normal((b, model.config.hidden_size)).astype(np.float32)
    w = model.unembed_weight()
    h = jnp.asarray(h_np)
    cfg = SamplingConfig(temperature=0.0 if mode == "greedy" else 1.0)

    @jax.jit
    def jax_head(h, w, key):
        return sample_token(h @ w.T, key, cfg)[0]

    key = jax.random.key(0)
    th = torch.from_numpy(h_np).to(DEVICE, dtype=hf.dtype)
    tw = hf.get_output_embeddings().weight

    def torch_head():
        with torch.inference_mode():
            logits = th @ tw.T
            out = torch.argmax(logits, -1) if mode == "greedy" else torch.multinomial(torch.softmax(logits, -1), 1)
            return out.cpu()

    return (lambda: jax.block_until_ready(jax_head(h, w, key))), torch_head


def machine_peaks(repeats: int = 5) -> dict:
    """Best-of-`repeats` fp32 matmul throughput and streaming bandwidth of this host (numpy/BLAS).

    GFLOP/s: a 2048^3 sgemm (all cores). GB/s: a [V, H] = [151936, 256] fp32 matrix times a
    vector (reads 156 MB per call, the size of the 43M config's LM head).
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2048, 2048), dtype=np.float32)
    w = rng.standard_normal((151936, 256), dtype=np.float32)
    x = rng.standard_normal((256,), dtype=np.float32)
    gemm = min(_timed(lambda: a @ a, repeats))
    gemv = min(_timed(lambda: w @ x, repeats))
    return {"sgemm_gflops": 2 * 2048 ** 3 / gemm / 1e9, "stream_gbps": w.nbytes / gemv / 1e9}


PEAKS: dict = {}


def work_floor(spec: dict, b: int, prompt_len: int, new_tokens: int, peaks: dict) -> dict:
    """Lower bound on the time of one greedy `generate` call from its matmul FLOPs and weight bytes.

    Prefill: 2 * B * P * (layer params) FLOPs plus one head row per prompt. Each decode step:
    2 * B * (layer params + head params) FLOPs, and it must read every fp32 weight once
    (4 * params bytes; the KV cache and activations are ignored, so this is optimistic).
    floor = prefill_flops / peak + steps * max(step_flops / peak, step_bytes / bandwidth).
    """
    h, i, n_layers = spec["hidden_size"], spec["intermediate_size"], spec["num_hidden_layers"]
    d = h // spec["num_attention_heads"]
    kv = spec["num_key_value_heads"] * d
    layer = n_layers * (h * h + 2 * h * kv + h * h + 3 * h * i)  # q, k, v, o, gate, up, down
    head = spec["vocab_size"] * h
    flops_prefill = 2 * b * prompt_len * layer + 2 * b * head
    flops_step = 2 * b * (layer + head)
    bytes_step = 4 * (layer + head)
    gflops, gbps = peaks["sgemm_gflops"], peaks["stream_gbps"]
    step_s = max(flops_step / gflops / 1e9, bytes_step / gbps / 1e9)
    return {"prefill_gflop": flops_prefill / 1e9, "decode_step_gflop": flops_step / 1e9,
            "decode_step_weight_mb": bytes_step / 1e6, "decode_step_floor_s": step_s,
            "floor_s": flops_prefill / gflops / 1e9 + new_tokens * step_s, "peaks": dict(peaks)}


def bench_one(name: str, spec: dict, model, hf, b: int, prompt_len: int, new_tokens: int,
              repeats: int, mode: str, breakdown: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed + b)
    prompts = rng.integers(0, spec["vocab_size"], (b, prompt_len)).astype(np.int32)
    mask = np.ones((b, prompt_len), np.int32)
    n_tok = b * new_tokens
    temperature = 0.0 if mode == "greedy" else 1.0
    res: dict = {"config": name, "batch": b, "prompt_len": prompt_len, "new_tokens": new_tokens,
                 "generated_tokens_per_call": n_tok, "sampling": mode,
                 "load_avg_before": list(os.getloadavg())}

    # --- JAX / Flax ------------------------------------------------------------------------
    scfg = SamplingConfig(max_new_tokens=new_tokens, temperature=temperature, eos_token_ids=(),
                          pad_token_id=0, prompt_buckets=(prompt_len,))
    graphdef, state = nnx.split(model)
    key = jax.random.key(seed)

    def flax_call():
        return jax.block_until_ready(generate((graphdef, state), prompts, mask, scfg, key))

    traces0 = trace_count()
    t0 = time.perf_counter()
    out = flax_call()
    first = time.perf_counter() - t0
    assert int(out.num_steps) == new_tokens and bool(np.all(np.asarray(out.response_lengths) == new_tokens))
    flax_tokens = np.asarray(out.responses)

    # --- transformers / PyTorch ------------------------------------------------------------
    tp = torch.from_numpy(prompts.astype(np.int64)).to(DEVICE)
    tm = torch.from_numpy(mask.astype(np.int64)).to(DEVICE)
    gen_kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=mode == "sample",
                      pad_token_id=0, eos_token_id=None, use_cache=True)
    if mode == "sample":
        gen_kwargs.update(temperature=1.0, top_k=0, top_p=1.0)
    else:
        gen_kwargs.update(temperature=None, top_k=None, top_p=None)

    def torch_call():
        with torch.inference_mode():
            return hf.generate(input_ids=tp, attention_mask=tm, **gen_kwargs).cpu()  # .cpu() waits for the GPU

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    tout = torch_call()
    torch_first = time.perf_counter() - t0
    assert tout.shape == (b, prompt_len + new_tokens), tout.shape
    torch_tokens = tout[:, prompt_len:].numpy()

    # Timed calls alternate between the two sides (flax first on even rounds, torch first on odd
    # ones), so that both see the same load; the paired ratio of each round is recorded as well.
    times: dict = {"flax": [], "torch": []}
    stalls: dict = {"flax": [], "torch": []}
    calls = {"flax": flax_call, "torch": torch_call}
    for r in range(repeats):
        for side in (("flax", "torch") if r % 2 == 0 else ("torch", "flax")):
            times[side] += _timed(calls[side], 1, stalls[side])
    res["flax"] = summarize_times(times["flax"], n_tok)
    res["flax"]["cpu_pressure_pct"] = stalls["flax"]
    res["flax"]["first_call_s"] = first
    res["flax"]["compile_s_estimate"] = first - res["flax"]["median_s"]
    res["flax"]["traces"] = trace_count() - traces0
    res["torch"] = {"first_call_s": torch_first, **summarize_times(times["torch"], n_tok)}
    res["torch"]["cpu_pressure_pct"] = stalls["torch"]
    res["ratio_flax_over_torch"] = res["flax"]["tokens_per_s_median"] / res["torch"]["tokens_per_s_median"]
    res["paired_ratio_median"] = statistics.median(t / f for f, t in zip(times["flax"], times["torch"]))
    res["floor"] = work_floor(spec, b, prompt_len, new_tokens, PEAKS)
    res["floor"]["flax_over_floor"] = res["flax"]["median_s"] / res["floor"]["floor_s"]
    res["floor"]["max_ratio_vs_torch"] = res["torch"]["median_s"] / res["floor"]["floor_s"]

    if mode == "greedy":
        same = flax_tokens == torch_tokens
        first_diff = np.where(same.all(1), new_tokens, np.argmin(same, axis=1))
        res["greedy_agreement"] = {"token_fraction": float(same.mean()),
                                   "rows_identical": int(same.all(1).sum()),
                                   "mean_tokens_before_first_difference": float(first_diff.mean())}

    if breakdown:
        jax_head, torch_head = _head_step_fns(model, hf, b, mode)
        jax_head(), torch_head()
        jh = statistics.median(_timed(jax_head, max(5, repeats)))
        th = statistics.median(_timed(torch_head, max(5, repeats)))
        res["vocab_head_per_step"] = {
            "what": "one [B,H]@[H,V] projection + token choice, timed alone; x steps / generate time",
            "flax_s": jh, "torch_s": th,
            "flax_fraction_of_generate": jh * new_tokens / res["flax"]["median_s"],
            "torch_fraction_of_generate": th * new_tokens / res["torch"]["median_s"]}
    res["load_avg_after"] = list(os.getloadavg())
    return res


def _table(rows: list[dict]) -> str:
    head = (f"{'config':<7}{'B':>4}  {'flax tok/s':>11} {'(min-max)':>17}  {'compile s':>9}  "
            f"{'torch tok/s':>11} {'(min-max)':>17}  {'flax/torch':>10}  {'paired':>6}  {'floor x':>7}  "
            f"{'max@floor':>9}  {'head% f/t':>10}  {'cpu-psi% f/t':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        f, t = r["flax"], r["torch"]
        head_pct = ""
        if "vocab_head_per_step" in r:
            v = r["vocab_head_per_step"]
            head_pct = f"{100 * v['flax_fraction_of_generate']:.0f}/{100 * v['torch_fraction_of_generate']:.0f}"
        psi = "/".join(f"{statistics.median(x['cpu_pressure_pct']):.0f}" if x.get("cpu_pressure_pct") else "-"
                       for x in (f, t))
        f_rng = f"({f['tokens_per_s_min']:.0f}-{f['tokens_per_s_max']:.0f})"
        t_rng = f"({t['tokens_per_s_min']:.0f}-{t['tokens_per_s_max']:.0f})"
        lines.append(
            f"{r['config']:<7}{r['batch']:>4}  {f['tokens_per_s_median']:>11.1f} {f_rng:>17}  "
            f"{f['compile_s_estimate']:>9.2f}  {t['tokens_per_s_median']:>11.1f} {t_rng:>17}  "
            f"{r['ratio_flax_over_torch']:>10.2f}  {r['paired_ratio_median']:>6.2f}  "
            f"{r['floor']['flax_over_floor']:>7.2f}  {r['floor']['max_ratio_vs_torch']:>9.2f}  {head_pct:>10}  {psi:>12}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--configs", default="small,large", help=f"comma list of {sorted(CONFIGS)}")
    ap.add_argument("--batches", default="8,64")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--sampling", choices=("greedy", "sample"), default="greedy",
                    help="same mode on both sides: argmax, or sampling at temperature 1")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the vocab-head timing")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                    help="parameter and compute dtype of both sides (default: bfloat16 on a GPU, else float32)")
    ap.add_argument("--out", default=str(RESULTS_DIR),
                    help="output directory (writes rollout.json), or a path ending in .json")
    args = ap.parse_args(argv)
    names = [ALIASES.get(c.strip(), c.strip()) for c in args.configs.split(",") if c.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")
    batches = [int(x) for x in args.batches.split(",") if x.strip()]

    global DEVICE, DTYPE
    on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    DEVICE = "cuda" if on_gpu else "cpu"
    DTYPE = args.dtype or ("bfloat16" if on_gpu else "float32")
    if not on_gpu:
        torch.set_num_threads(os.cpu_count() or 1)
    jax.config.update("jax_default_matmul_precision", "highest" if DTYPE == "float32" else "default")
    payload: dict = {"benchmark": "bench_rollout", "args": vars(args),
                     "torch_threads": torch.get_num_threads(), "load_avg_at_start": list(os.getloadavg()),
                     "torch_device": DEVICE, "dtype": DTYPE, "sampling": args.sampling, "results": []}
    PEAKS.update(machine_peaks())
    payload["machine_peaks_at_start"] = dict(PEAKS)
    for name in names:
        spec = CONFIGS[name]
        model, hf = build_models(spec)
        payload.setdefault("configs", {})[name] = {
            **spec, "params": sum(p.numel() for p in hf.parameters()),
            "torch_attn_implementation": getattr(hf.config, "_attn_implementation", None)}
        for b in batches:
            print(f"[bench_rollout] {name} B={b} ...", flush=True)
            payload["results"].append(bench_one(name, spec, model, hf, b, args.prompt_len, args.new_tokens,
                                                args.repeats, args.sampling, not args.no_breakdown))
        del model, hf
    payload["load_avg_at_end"] = list(os.getloadavg())
    table = _table(payload["results"])
    payload["table"] = table.splitlines()
    out = Path(args.out)
    path = (write_json(out.stem, payload, out.parent) if out.suffix == ".json"
            else write_json("rollout", payload, out))
    print(f"sampling={args.sampling}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
          f"torch threads {payload['torch_threads']}, load avg start {payload['load_avg_at_start']}")
    print(table)
    print(f"[bench_rollout] wrote {path}")
    payload["path"] = str(path)
    return payload


if __name__ == "__main__":
    main()
