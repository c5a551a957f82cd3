"""Train-step benchmark: sspo_jax's jitted update vs transformers + torch.optim on the same machine.

One train step is forward + backward + AdamW (after global-norm clipping at 1.0) on a clipped
policy-gradient loss over B rows of T tokens (prompt = the first T/4 columns, response = the rest,
every other row left-padded by up to T/8):

* **flax**: the library's own update, ``sspo_jax.train.step.make_update_fn`` (one epoch, one
  minibatch, one micro-batch, state donated), with the chunked log-prob head, for the preset
  ``--preset`` (default ``grpo`` without its KL term: token ratios, eps 0.2, token-mean);
  ``--extra-presets`` times further presets on the Flax side only (e.g. ``sspo``: segment
  ratios and entropy-scaled bounds on top of the same forward and backward);
* **torch**: `transformers.Qwen2ForCausalLM` with the same weights, full logits, ``log_softmax``
  and gather, the same clipped surrogate and aggregation, ``clip_grad_norm_`` and
  ``torch.optim.AdamW`` (fused on CUDA). This is what a TRL-style trainer runs.

Both sides use fp32 parameters; ``--dtype bfloat16`` computes in bf16 on both sides (Flax
``compute_dtype``, torch ``autocast``). Timings are the median, min, max and stdev over
``--repeats`` steps after ``--warmup`` steps (the first Flax call, tracing and compilation, is
reported separately as ``first_call_s``).

The hardware ceiling: a large matrix product through JAX (fp32 on CPU, ``--dtype`` on a GPU) gives
the measured matmul peak; model FLOPs utilisation (MFU) = model FLOPs of the step / step time /
peak, with model FLOPs per token = 6 * (matmul parameters + V * H for the LM head)
+ 6 * L * Hq * D * T (causal attention scores and values, forward and backward). XLA's own FLOP
count of the compiled update (which includes the chunked head's recomputation) is recorded too.

``--micro-rows R`` runs the Flax update in micro-batches of R rows (gradients summed exactly, as
``train.micro_batch_size`` does; small micro-batches keep a CPU's activations in cache) and
``--unroll-layers`` unrolls its layer scan (``model.scan_layers: false``); the torch side always
runs the whole batch in one pass (its fastest on CPU: gradient accumulation over 2-row micro-batches
measured slower). On fp32 the benchmark also times the same large product through torch
(``matmul_peak_torch``) and each of the model's GEMM shapes through both libraries (``gemms``):
on a CPU they call different GEMM code, and a matmul-bound step cannot beat torch by more than
the ratio of the two (the table's last column, weighted by FLOPs).

Configs: ``5M`` (vocab 4096) and ``43M`` (vocab 151936) as in bench_model; ``0.5B`` is the
Qwen2.5-0.5B shape (24 layers, hidden 896, vocab 151936) for GPUs; ``tiny`` is for the smoke test.
Writes ``benchmarks/results/train.json`` (or ``--out``)::

    .venv/bin/python benchmarks/bench_train.py [--configs 5M,43M] [--batch 8] [--seq-len 256]
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
import optax
import torch
import transformers
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_model import CONFIGS as MODEL_CONFIGS  # noqa: E402
from common import (RESULTS_DIR, measure_matmul_peak, model_flops_per_token, summarize_times,  # noqa: E402
                    timed_calls, write_json)

from sspo_jax.algorithms import presets  # noqa: E402
from sspo_jax.algorithms.clipping import segment_entropy_stats  # noqa: E402
from sspo_jax.algorithms.segments import DelimiterTable, segment_ids  # noqa: E402
from sspo_jax.models import from_pretrained  # noqa: E402
from sspo_jax.train.step import Models, make_update_fn  # noqa: E402
from sspo_jax.train.state import RolloutBatch, TrainState  # noqa: E402

CONFIGS = {
    "tiny": dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "5M": MODEL_CONFIGS["5M"],
    "43M": MODEL_CONFIGS["43M"],
    "0.5B": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
}
LR = 1e-6  # small: repeated steps on one batch must stay finite


def measure_torch_matmul_peak(n: int, repeats: int, device: str) -> dict:
    """FLOP/s of the same fp32 [n, n] @ [n, n] product through torch (its BLAS: oneDNN/MKL on CPU)."""
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(1)
    a, b = (torch.randn(n, n, generator=gen).to(dev) for _ in range(2))

    def call():
        out = a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    call()
    times = timed_calls(call, repeats)
    flops = 2.0 * n ** 3
    med = statistics.median(times)
    return {"n": n, "dtype": "float32", "seconds": times, "median_s": med, "flops": flops,
            "flops_per_s_median": flops / med, "flops_per_s_max": flops / min(times)}


def gemm_shapes(spec: dict, tokens: int) -> list[tuple[int, int, int]]:
    """The (M, K, N) products of one layer's forward and the LM head at `tokens` rows."""
    h, hi, v = spec["hidden_size"], spec["intermediate_size"], spec["vocab_size"]
    d = h // spec["num_attention_heads"]
    kv = spec["num_key_value_heads"] * d
    return sorted({(tokens, h, h), (tokens, h, kv), (tokens, h, hi), (tokens, hi, h), (tokens, h, v)})


def compare_gemms(spec: dict, tokens: int, repeats: int, device: str) -> list[dict]:
    """GFLOP/s of each of the model's fp32 products through XLA and through torch, side by side.

    On a CPU both sides call different GEMM libraries (XLA: its own emitters and YNNPACK; torch:
    oneDNN/MKL), and a step that is bound by its matmuls cannot be faster than the ratio of these.
    """
    rows = []
    gen = np.random.default_rng(0)
    f = jax.jit(lambda x, y: jnp.dot(x, y, precision="highest"))
    for m, k, n in gemm_shapes(spec, tokens):
        a = gen.standard_normal((m, k)).astype(np.float32)
        b = gen.standard_normal((k, n)).astype(np.float32)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        f(ja, jb).block_until_ready()
        jt = statistics.median(timed_calls(lambda: f(ja, jb).block_until_ready(), repeats))
        ta, tb = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)

        def tcall():
            out = ta @ tb
            if device == "cuda":
                torch.cuda.synchronize()
            return out

        tcall()
        tt = statistics.median(timed_calls(tcall, repeats))
        flops = 2.0 * m * k * n
        rows.append({"m": m, "k": k, "n": n, "xla_gflops": flops / jt / 1e9, "torch_gflops": flops / tt / 1e9,
                     "torch_over_xla": jt / tt})
    return rows


def make_batch(vocab: int, b: int, t: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Host arrays of one rollout batch: tokens, masks, old log-probs and advantages."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, vocab, (b, t)).astype(np.int32)
    attn = np.ones((b, t), bool)
    for i in range(0, b, 2):
        attn[i, :rng.integers(1, max(t // 8, 2))] = False
    tokens[~attn] = 0
    resp = np.zeros((b, t), bool)
    resp[:, t // 4:] = True
    resp &= attn
    old_logp = np.where(resp, -np.log(vocab) + 0.1 * rng.standard_normal((b, t)), 0.0).astype(np.float32)
    adv = np.repeat(rng.standard_normal((b, 1)), t, axis=1).astype(np.float32)
    return {"tokens": tokens, "attention_mask": attn, "response_mask": resp, "old_logp": old_logp,
            "advantages": adv}


# ---- torch ------------------------------------------------------------------------------------

def torch_step_fn(hf, batch: dict, alg, device: str, dtype: str):
    """One torch train step (closure), the same loss as the Flax side's token-ratio presets."""
    dev = torch.device(device)
    tokens = torch.from_numpy(batch["tokens"].astype(np.int64)).to(dev)
    attn = torch.from_numpy(batch["attention_mask"].astype(np.int64)).to(dev)
    pos = torch.clamp(torch.cumsum(attn, 1) - 1, min=0)
    resp = torch.from_numpy(batch["response_mask"][:, 1:]).to(dev)
    old = torch.from_numpy(batch["old_logp"][:, 1:]).to(dev)
    adv = torch.from_numpy(batch["advantages"][:, 1:]).to(dev)
    targets = tokens[:, 1:]
    opt = torch.optim.AdamW(hf.parameters(), lr=LR, weight_decay=0.0, fused=dev.type == "cuda")
    autocast = dtype == "bfloat16"
    w = resp.float()

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            logits = hf(input_ids=tokens, attention_mask=attn, position_ids=pos).logits[:, :-1]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None])[..., 0]
        ratio = torch.exp(logp - old)
        clipped = torch.clamp(ratio, 1 - alg.eps_low, 1 + alg.eps_high)
        loss = (-torch.minimum(ratio * adv, clipped * adv) * w).sum() / w.sum().clamp(min=1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return loss

    return step


# ---- flax -------------------------------------------------------------------------------------

def flax_update(graphdef, params, alg, batch: dict, chunk: int, table, micro_rows: int = 0) -> tuple:
    """(jitted update, initial state, device batch) for one preset.

    ``micro_rows``: rows per forward/backward micro-batch (gradients summed exactly over them);
    0 = the whole batch in one pass.
    """
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(LR, weight_decay=0.0))
    b = batch["tokens"].shape[0]
    micro = b if micro_rows <= 0 else min(micro_rows, b)
    if b % micro:
        raise SystemExit(f"bench_train: --micro-rows {micro_rows} must divide --batch {b}")
    update = make_update_fn(Models(policy=graphdef), alg, tx, None, chunk_size=chunk, micro_rows=micro)
    tokens = jnp.asarray(batch["tokens"])
    attn, resp = jnp.asarray(batch["attention_mask"]), jnp.asarray(batch["response_mask"])
    seg = segment_ids(tokens, resp, table, alg.segmentation)
    entropy = jnp.where(resp, 1.0 + 0.5 * jnp.asarray(np.random.default_rng(1).random(resp.shape),
                                                        jnp.float32), 0.0)
    zeros = jnp.zeros(tokens.shape, jnp.float32)
    rb = RolloutBatch(tokens=tokens, attention_mask=attn, response_mask=resp,
                      old_logp=jnp.asarray(batch["old_logp"]), entropy=entropy, ref_logp=zeros,
                      segment_ids=seg, advantages=jnp.asarray(batch["advantages"]), returns=zeros,
                      old_values=zeros, rewards=jnp.zeros((b,), jnp.float32),
                      last_prompt_index=jnp.zeros((b,), jnp.int32),
                      entropy_stats=segment_entropy_stats(entropy, resp, seg))
    copy = jax.tree.map(jnp.copy, params)  # the update donates its state
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)),
                       params=copy, opt_state=tx.init(copy))
    return update, state, rb


def bench_config(name: str, spec: dict, args, device: str) -> dict:
    b, t = args.batch, args.seq_len
    torch.manual_seed(0)
    hf_cfg = transformers.Qwen2Config(**spec, max_position_embeddings=max(4096, t), rms_norm_eps=1e-6,
                                      rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
    hf = transformers.Qwen2ForCausalLM(hf_cfg).float()
    n_params = sum(p.numel() for p in hf.parameters())
    batch = make_batch(spec["vocab_size"], b, t)
    n_tok = b * t
    flops = model_flops_per_token(spec, t)
    res: dict = {"config": name, "params": n_params, "batch": b, "seq_len": t, "tokens_per_step": n_tok,
                 "dtype": args.dtype, "model_flops_per_token": flops, "load_avg_before": list(os.getloadavg())}
    if args.dtype == "float32":  # the GEMMs at one micro-batch's rows, XLA vs torch
        rows = b if args.micro_rows <= 0 else min(args.micro_rows, b)
        res["gemms"] = compare_gemms(spec, rows * t, max(args.repeats, 10), device)
        res["gemm_rows"] = rows * t
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        compute = jnp.bfloat16 if args.dtype == "bfloat16" else None
        model = from_pretrained(d, dtype=jnp.float32, compute_dtype=compute, remat=args.remat,
                                scan_layers=not args.unroll_layers)
    graphdef, params = nnx.split(model)
    del model

    # Flax first: the torch side's fused optimizer and allocator caches are not yet holding memory.
    # Segments for the segment-ratio presets: ids 2..15 decode to sentence ends, the rest to words.
    texts = ["" if i < 2 else ". " if i < 16 else f" w{i}" for i in range(spec["vocab_size"])]
    table = DelimiterTable.from_token_texts(texts, presets.get("sspo").segmentation)
    for preset in [args.preset, *args.extra_presets]:
        alg = presets.get(preset, kl_beta=0.0, num_minibatches=1, ppo_epochs=1, loss_agg_mode="token-mean")
        update, state, rb = flax_update(graphdef, params, alg, batch, args.chunk, table, args.micro_rows)
        t0 = time.perf_counter()
        lowered = update.lower(state, rb)
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        holder = {"state": state}

        def flax_step():
            holder["state"], m = compiled(holder["state"], rb)
            jax.block_until_ready(m["loss"])
            return m

        t0 = time.perf_counter()
        metrics = flax_step()
        first = time.perf_counter() - t0
        assert np.isfinite(float(metrics["loss"])), f"flax {preset}: non-finite loss"
        for _ in range(args.warmup):
            flax_step()
        entry = summarize_times(timed_calls(flax_step, args.repeats), n_tok)
        entry.update({"compile_s": compile_s, "first_call_s": first,
                      "xla_flops": float(cost.get("flops", 0.0)) if cost else None,
                      "model_flops_per_s": flops["total"] * n_tok / entry["median_s"],
                      "skipped": float(metrics["skipped"])})
        res[f"flax_{preset}"] = entry
        del holder, state, update, compiled
    del params

    hf = hf.to(device)
    hf.train()
    torch_step = torch_step_fn(hf, batch, presets.get(args.preset), device, args.dtype)
    t0 = time.perf_counter()
    loss = torch_step()
    first = time.perf_counter() - t0
    assert torch.isfinite(loss), "torch: non-finite loss"
    for _ in range(args.warmup):
        torch_step()
    res["torch"] = summarize_times(timed_calls(torch_step, args.repeats), n_tok)
    res["torch"]["first_call_s"] = first
    res["torch"]["model_flops_per_s"] = flops["total"] * n_tok / res["torch"]["median_s"]
    res["torch"]["attn_implementation"] = getattr(hf.config, "_attn_implementation", None)
    res["ratio_flax_over_torch"] = (res[f"flax_{args.preset}"]["tokens_per_s_median"]
                                    / res["torch"]["tokens_per_s_median"])
    res["load_avg_after"] = list(os.getloadavg())
    del hf
    return res


def _gemm_ratio(res: dict) -> str:
    """FLOP-weighted speed of torch's GEMMs over XLA's at the model's shapes ("-" if not measured)."""
    rows = res.get("gemms")
    if not rows:
        return "-"
    flops = [2.0 * g["m"] * g["k"] * g["n"] for g in rows]
    xla = sum(f / (g["xla_gflops"] * 1e9) for f, g in zip(flops, rows))
    tch = sum(f / (g["torch_gflops"] * 1e9) for f, g in zip(flops, rows))
    return f"{xla / tch:.2f}x"


def _table(payload: dict) -> str:
    peak = payload["matmul_peak"]["flops_per_s_median"]
    pre = payload["args"]["preset"]
    lines = ["| config | params | B x T | flax tok/s | torch tok/s | flax / torch | flax MFU | torch MFU "
             "| torch / XLA GEMM |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in payload["results"]:
        f, t = r[f"flax_{pre}"], r["torch"]
        lines.append(f"| {r['config']} | {r['params'] / 1e6:.1f}M | {r['batch']} x {r['seq_len']} | "
                     f"{f['tokens_per_s_median']:.0f} | {t['tokens_per_s_median']:.0f} | "
                     f"{r['ratio_flax_over_torch']:.2f}x | {f['mfu']:.1%} | {t['mfu']:.1%} | {_gemm_ratio(r)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="5M,43M", help=f"comma list of {sorted(CONFIGS)}")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="compute dtype on both sides (parameters stay fp32)")
    ap.add_argument("--preset", default="grpo", help="the preset timed on both sides (a token-ratio one)")
    ap.add_argument("--extra-presets", default="sspo", help="comma list timed on the Flax side only")
    ap.add_argument("--chunk", type=int, default=256, help="vocabulary-head chunk (tokens) on the Flax side")
    ap.add_argument("--remat", action="store_true", help="rematerialise each decoder layer on the Flax side")
    ap.add_argument("--micro-rows", type=int, default=0,
                    help="Flax side: rows per forward/backward micro-batch (0: the whole batch)")
    ap.add_argument("--unroll-layers", action="store_true",
                    help="Flax side: unroll the layer scan (model.scan_layers: false)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--matmul-n", type=int, default=0, help="matmul-peak size (0: 2048 on CPU, 8192 on GPU)")
    ap.add_argument("--device", default=None, help="torch device (default: cuda if JAX runs on a GPU, else cpu)")
    ap.add_argument("--out", default=str(RESULTS_DIR), help="output directory (train.json) or a .json path")
    args = ap.parse_args(argv)
    args.extra_presets = [p for p in args.extra_presets.split(",") if p.strip() and p != args.preset]
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")
    if presets.get(args.preset).segmentation.granularity != "token":
        ap.error(f"--preset {args.preset!r}: the torch side implements token ratios only")
    on_gpu = jax.default_backend() == "gpu"
    device = args.device or ("cuda" if on_gpu and torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    jax.config.update("jax_default_matmul_precision", "highest" if args.dtype == "float32" else "default")
    peak_dtype = "float32" if not on_gpu else args.dtype
    n = args.matmul_n or (8192 if on_gpu else 2048)
    payload: dict = {"benchmark": "bench_train", "args": vars(args), "torch_device": device,
                     "torch_threads": torch.get_num_threads(), "load_avg_at_start": list(os.getloadavg()),
                     "matmul_peak": measure_matmul_peak(peak_dtype, n, max(args.repeats, 5)), "results": []}
    if peak_dtype == "float32":
        payload["matmul_peak_torch"] = measure_torch_matmul_peak(n, max(args.repeats, 5), device)
    peak = payload["matmul_peak"]["flops_per_s_median"]
    print(f"[bench_train] matmul peak {peak / 1e9:.1f} GFLOP/s ({peak_dtype}, n={n})", flush=True)
    if "matmul_peak_torch" in payload:
        print(f"[bench_train] torch matmul peak {payload['matmul_peak_torch']['flops_per_s_median'] / 1e9:.1f} "
              "GFLOP/s (the same product)", flush=True)
    for name in names:
        print(f"[bench_train] {name} B={args.batch} T={args.seq_len} {args.dtype} ...", flush=True)
        res = bench_config(name, CONFIGS[name], args, device)
        for key in [k for k in res if k.startswith("flax_")] + ["torch"]:
            res[key]["mfu"] = res[key]["model_flops_per_s"] / peak
        payload["results"].append(res)
        print(f"  flax/torch {res['ratio_flax_over_torch']:.2f}x, flax MFU "
              f"{res[f'flax_{args.preset}']['mfu']:.1%}", flush=True)
    payload["load_avg_at_end"] = list(os.getloadavg())
    table = _table(payload)
    payload["table"] = table.splitlines()
    out = Path(args.out)
    path = (write_json(out.stem, payload, out.parent) if out.suffix == ".json"
            else write_json("train", payload, out))
    print(table)
    print(f"[bench_train] wrote {path}")
    payload["path"] = str(path)
    return payload


if __name__ == "__main__":
    main()
