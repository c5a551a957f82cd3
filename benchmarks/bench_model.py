"""Benchmark of the Flax Qwen2 against transformers' PyTorch Qwen2ForCausalLM on this CPU.

Measures, on the same config, weights and batch (B=8, T=256, rows with left padding):
  * forward tokens/s and forward+backward tokens/s (next-token log-likelihood loss) for
    - torch: `Qwen2ForCausalLM` fp32, `torch.set_num_threads(2)`, logits + cross entropy;
    - flax_full: jitted `nnx.merge` forward producing full [B, T, V] logits;
    - flax_chunked: hidden states + `token_logprobs_from_hidden` (chunked vocabulary projection);
  * peak memory of chunked vs naive token statistics at T=4096, V=151936 (XLA's compiled
    memory analysis: temporary buffers of the jitted program, value and value+grad).
Configs: "5M" (vocab 4096) and "43M" (vocab 151936, a 4-layer 256-wide Qwen2 with tied
embeddings). Writes JSON to benchmarks/results/model.json with machine info, versions, date, and
the median, min and max over repeats. Run: `.venv/bin/python benchmarks/bench_model.py`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import machine_info, summarize_times, timed_calls  # noqa: E402
from sspo_jax.models import (  # noqa: E402
    from_pretrained,
    naive_token_logprobs_and_entropy,
    token_logprobs_and_entropy,
)

CONFIGS = {
    "5M": dict(vocab_size=4096, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "43M": dict(vocab_size=151936, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}


def _batch(vocab: int, b: int, t: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (b, t)).astype(np.int64)
    mask = np.ones((b, t), np.int64)
    for i in range(0, b, 2):  # half the rows left-padded by up to T/4
        mask[i, :rng.integers(1, t // 4)] = 0
    return tokens, mask


def bench_config(name: str, spec: dict, b: int, t: int, repeats: int, chunk: int) -> dict:
    torch.manual_seed(0)
    hf_cfg = transformers.Qwen2Config(
        **spec, max_position_embeddings=4096, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
    hf = transformers.Qwen2ForCausalLM(hf_cfg).float()
    n_params = sum(p.numel() for p in hf.parameters())
    tokens, mask = _batch(spec["vocab_size"], b, t)
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    n_tok = b * t
    result: dict = {"params": n_params, "batch": b, "seq_len": t, **spec}

    # --- torch reference -------------------------------------------------------------------
    tt, tm, tp = (torch.tensor(a) for a in (tokens, mask, pos))
    hf.eval()

    def torch_fwd():
        with torch.no_grad():
            return hf(input_ids=tt, attention_mask=tm, position_ids=tp).logits

    def torch_fwd_bwd():
        hf.zero_grad(set_to_none=True)
        logits = hf(input_ids=tt, attention_mask=tm, position_ids=tp).logits
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), tt[:, 1:].reshape(-1), reduction="none")
        w = tm[:, 1:].reshape(-1).float()
        ((nll * w).sum() / w.sum()).backward()

    torch_fwd()
    torch_fwd_bwd()
    result["torch_forward"] = summarize_times(timed_calls(torch_fwd, repeats), n_tok)
    result["torch_forward_backward"] = summarize_times(timed_calls(torch_fwd_bwd, repeats), n_tok)

    # --- flax, same weights ----------------------------------------------------------------
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model = from_pretrained(d)
    del hf
    graphdef, params = nnx.split(model, nnx.Param)
    jt, jm = jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, jnp.int32)
    w = jm[:, 1:].astype(jnp.float32)

    @jax.jit
    def flax_fwd(p, tok, m):
        return nnx.merge(graphdef, p)(tok, m)

    def loss_full(p, tok, m):
        logits = nnx.merge(graphdef, p)(tok, m)[:, :-1]
        lse = jax.nn.logsumexp(logits, -1)
        logp = jnp.take_along_axis(logits, tok[:, 1:, None], -1)[..., 0] - lse
        return -jnp.sum(logp * w) / jnp.sum(w)

    def loss_chunked(p, tok, m):
        mm = nnx.merge(graphdef, p)
        logp, _ = mm.token_logprobs_and_entropy(tok, m, chunk_size=chunk, compute_entropy=False)
        return -jnp.sum(logp[:, 1:] * w) / jnp.sum(w)

    @jax.jit
    def flax_chunked_fwd(p, tok, m):
        return loss_chunked(p, tok, m)

    variants = {
        "flax_full_forward": lambda: flax_fwd(params, jt, jm),
        "flax_full_forward_backward": (lambda g: lambda: g(params, jt, jm))(
            jax.jit(jax.grad(loss_full))),
        "flax_chunked_forward": lambda: flax_chunked_fwd(params, jt, jm),
        "flax_chunked_forward_backward": (lambda g: lambda: g(params, jt, jm))(
            jax.jit(jax.grad(loss_chunked))),
    }
    for key, fn in variants.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        compile_s = time.perf_counter() - t0
        result[key] = summarize_times(timed_calls(lambda: jax.block_until_ready(fn()), repeats), n_tok)
        result[key]["first_call_s"] = compile_s
    tps = lambda k: result[k]["tokens_per_s_median"]  # noqa: E731
    result["ratios_flax_over_torch"] = {
        "forward_full": tps("flax_full_forward") / tps("torch_forward"),
        "forward_chunked": tps("flax_chunked_forward") / tps("torch_forward"),
        "forward_backward_full": tps("flax_full_forward_backward") / tps("torch_forward_backward"),
        "forward_backward_chunked": (tps("flax_chunked_forward_backward")
                                     / tps("torch_forward_backward")),
    }
    return result


def bench_token_stats_memory(t: int, v: int, h: int, chunk: int, run: bool, repeats: int) -> dict:
    hidden = jax.ShapeDtypeStruct((1, t, h), jnp.float32)
    weight = jax.ShapeDtypeStruct((v, h), jnp.float32)
    targets = jax.ShapeDtypeStruct((1, t), jnp.int32)
    fns = {
        "naive": lambda hs, w, y: naive_token_logprobs_and_entropy(hs, w, y),
        "chunked": lambda hs, w, y: token_logprobs_and_entropy(hs, w, y, chunk_size=chunk),
    }
    out: dict = {"batch": 1, "seq_len": t, "vocab": v, "hidden": h, "chunk_size": chunk,
                 "full_logits_fp32_bytes": 4 * t * v,
                 "method": "XLA compiled memory_analysis().temp_size_in_bytes of the jitted "
                           "program (logp + entropy; value, and value+grad w.r.t. hidden and "
                           "unembedding)"}
    rng = np.random.default_rng(0)
    concrete = (jnp.asarray(rng.standard_normal((1, t, h)), jnp.float32),
                jnp.asarray(0.05 * rng.standard_normal((v, h)), jnp.float32),
                jnp.asarray(rng.integers(0, v, (1, t)), jnp.int32))
    for name, fn in fns.items():
        def scalar(hs, w, y, fn=fn):
            logp, ent = fn(hs, w, y)
            return jnp.sum(logp) + 0.01 * jnp.sum(ent)

        fwd = jax.jit(fn).lower(hidden, weight, targets).compile()
        grad = jax.jit(jax.grad(scalar, argnums=(0, 1))).lower(hidden, weight, targets).compile()
        entry = {"forward_temp_bytes": fwd.memory_analysis().temp_size_in_bytes,
                 "forward_backward_temp_bytes": grad.memory_analysis().temp_size_in_bytes}
        if run:
            jax.block_until_ready(grad(*concrete))
            entry["forward_backward"] = summarize_times(
                timed_calls(lambda: jax.block_until_ready(grad(*concrete)), repeats), t)
        out[name] = entry
    out["ratio_naive_over_chunked_forward_backward"] = (
        out["naive"]["forward_backward_temp_bytes"] / out["chunked"]["forward_backward_temp_bytes"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="5M,43M")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=64, help="token-stats chunk for the models")
    ap.add_argument("--mem-seq-len", type=int, default=4096)
    ap.add_argument("--mem-chunk", type=int, default=256)
    ap.add_argument("--mem-run", action="store_true", help="also time the T=4096 token stats")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results", "model.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    jax.config.update("jax_default_matmul_precision", "highest")
    report = {"benchmark": "bench_model", "date": datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds"), "machine": {**machine_info(), "load_avg_at_start": os.getloadavg()},
        "args": vars(args), "torch_threads": torch.get_num_threads(), "models": {}}
    for name in args.configs.split(","):
        print(f"[bench_model] config {name} ...", flush=True)
        report["models"][name] = bench_config(name, CONFIGS[name], args.batch, args.seq_len,
                                              args.repeats, args.chunk)
        print(json.dumps(report["models"][name]["ratios_flax_over_torch"]), flush=True)
    print("[bench_model] token-stats memory ...", flush=True)
    report["token_stats_memory"] = bench_token_stats_memory(
        args.mem_seq_len, 151936, 256, args.mem_chunk, args.mem_run, 1)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(json.dumps({k: report["models"][k]["ratios_flax_over_torch"] for k in report["models"]}
                     | {"token_stats_memory": {
                         k: report["token_stats_memory"][k] for k in ("naive", "chunked")}},
                     indent=2))


if __name__ == "__main__":
    main()
