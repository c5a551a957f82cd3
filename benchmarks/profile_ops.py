"""Where the time goes: per-XLA-op profile of `generate` or the train step, as JSON.

Traces one steady-state call of the jitted program with `jax.profiler` (a Perfetto trace), adds up
the wall time of every XLA op (thunk) by name, and labels each with what the compiled HLO says it
is: its shape, the JAX operation it came from (``metadata op_name``, e.g. ``.../dot_general``), a
category (``matmul`` for XLA's dot fusions, ``other``) and whether it runs inside a loop body. The categories answer the question a benchmark table cannot: is the program bound by
its matmuls (then the CPU's GEMM speed is the limit), or by the ops around them (then fusion,
layout or loop structure is)?

    .venv/bin/python benchmarks/profile_ops.py generate --config small --batch 8
    .venv/bin/python benchmarks/profile_ops.py train --config 43M --batch 8 --seq-len 256
    .venv/bin/python benchmarks/profile_ops.py update --job-config configs/tiny_grpo.yaml

``update`` profiles the trainer's own jitted update on the last real batch of a few training
steps of a job config (``--set`` overrides it); ``tokens`` then counts the batch's valid tokens.

Writes ``benchmarks/results/profile_<what>_<config>_b<batch>.json`` (``--out`` to change the
directory). Times come from one traced call on a shared 2-core machine: read the shares, not
the absolute milliseconds, and rerun when the machine is busy (the JSON records the load average).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_rollout import ALIASES, CONFIGS  # noqa: E402
from common import RESULTS_DIR, summarize_times, timed_calls, write_json  # noqa: E402

from sspo_jax.models import Qwen2Config, Qwen2ForCausalLM  # noqa: E402
from sspo_jax.rollout import SamplingConfig  # noqa: E402
from sspo_jax.rollout.generate import _generate  # noqa: E402

# Trace events that wrap or wait for the ops rather than being one (thunk executor, thread pool,
# Python frames): left out of the op table.
_WRAPPERS = re.compile(r"^(\$|ThunkExecutor|SlinkyThreadPool|TfrtCpu|PjRt|Thunk::|XlaModule|jit_|while\.?\d*$)")
_INSTR = re.compile(r"^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = (?P<shape>\S+) (?P<op>[\w\-]+)\((?P<rest>.*)$")


def hlo_index(hlo_text: str) -> dict[str, dict[str, str]]:
    """Instruction name -> {shape, opcode, op_name (the JAX operation), kind} of a compiled HLO."""
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        rest = m["rest"]
        op_name = re.search(r'op_name="([^"]*)"', rest)
        kind = re.search(r'"kind":"(\w+)"', rest) or re.search(r"kind=(\w+)", rest)
        out[m["name"]] = {"shape": m["shape"], "opcode": m["op"],
                          "op_name": op_name.group(1) if op_name else "",
                          "kind": kind.group(1) if kind else ""}
    return out


def category(info: dict[str, str]) -> str:
    """``matmul`` for XLA's dot fusions (on CPU: YNNPACK fusions, which also take the decode
    attention's multiply-and-reduce over the cache) and plain dots, ``other`` for the rest."""
    if info.get("kind") == "__ynn_fusion" or info.get("opcode") in ("dot", "convolution"):
        return "matmul"
    return "other"


def where(info: dict[str, str]) -> str:
    """``loop`` for ops inside a while loop (decoding steps, scanned layers), ``outside`` otherwise."""
    return "loop" if "while/body" in info.get("op_name", "") else "outside"


def group(info: dict[str, str]) -> str:
    """``<category>/<pass>/<JAX op>``: the pass is ``backward`` for ops autodiff made (their source
    is under ``transpose(jvp(...))``), ``forward`` otherwise; the JAX op is the last part of the
    source path (``dot_general``, ``add_any``, ``mul``...)."""
    op_name = info.get("op_name", "")
    pas = "backward" if "transpose(jvp" in op_name else "forward"
    return f"{category(info)}/{pas}/{op_name.rsplit('/', 1)[-1] or info.get('opcode', '?')}"


def trace_ops(fn, hlo_text: str, top: int) -> dict[str, Any]:
    """Runs `fn` once under the profiler and returns the op table and category shares."""
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            fn()
        files = glob.glob(os.path.join(d, "**", "*.json.gz"), recursive=True)
        if not files:
            raise RuntimeError(f"jax.profiler wrote no Perfetto trace under {d}")
        with gzip.open(files[0]) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    total = collections.Counter()
    calls = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not _WRAPPERS.match(e.get("name", "")):
            total[e["name"]] += float(e.get("dur", 0.0))
            calls[e["name"]] += 1
    index = hlo_index(hlo_text)
    known = {n: t for n, t in total.items() if n in index}  # XLA ops of this program only
    op_sum = sum(known.values()) or 1.0
    shares, places, groups = collections.Counter(), collections.Counter(), collections.Counter()
    for name, t in known.items():
        shares[category(index[name])] += t / op_sum
        places[where(index[name])] += t / op_sum
        groups[group(index[name])] += t / op_sum
    rows = [{"op": name, "ms_total": t / 1e3, "calls": calls[name], "ms_per_call": t / 1e3 / calls[name],
             "share": t / op_sum, "category": category(index[name]), "where": where(index[name]),
             **index[name]}
            for name, t in sorted(known.items(), key=lambda kv: -kv[1])[:top]]
    return {"ops_ms_total": op_sum / 1e3, "distinct_ops": len(known), "category_share": dict(shares),
            "where_share": dict(places), "group_share": dict(groups.most_common()), "top_ops": rows}


def generate_program(config: str, batch: int, new_tokens: int, prompt_len: int):
    cfg = Qwen2Config(**CONFIGS[config])
    gd, state = nnx.split(Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0)))
    sc = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0, eos_token_ids=(), prompt_buckets=(prompt_len,))
    tokens = jnp.asarray(np.random.default_rng(0).integers(2, cfg.vocab_size, (batch, prompt_len)), jnp.int32)
    mask = jnp.ones((batch, prompt_len), bool)
    key = jax.random.key(0)
    hlo = _generate.lower(gd, state, tokens, mask, key, sc).compile().as_text()

    def call():
        jax.block_until_ready(_generate(gd, state, tokens, mask, key, sc).tokens)
    return call, hlo, batch * new_tokens


def train_program(config: str, batch: int, seq_len: int, preset: str, micro_rows: int = 0,
                  scan_layers: bool = True):
    import transformers

    from bench_train import flax_update, make_batch

    from sspo_jax.algorithms import presets
    from sspo_jax.algorithms.segments import DelimiterTable
    from sspo_jax.models import from_pretrained

    spec = CONFIGS[config]
    hf_cfg = transformers.Qwen2Config(**spec, max_position_embeddings=max(4096, seq_len), rms_norm_eps=1e-6)
    with tempfile.TemporaryDirectory() as d:
        transformers.Qwen2ForCausalLM(hf_cfg).float().save_pretrained(d)
        model = from_pretrained(d, dtype=jnp.float32, scan_layers=scan_layers)
    graphdef, params = nnx.split(model)
    texts = ["" if i < 2 else ". " if i < 16 else f" w{i}" for i in range(spec["vocab_size"])]
    table = DelimiterTable.from_token_texts(texts, presets.get("sspo").segmentation)
    alg = presets.get(preset, kl_beta=0.0, num_minibatches=1, ppo_epochs=1, loss_agg_mode="token-mean")
    update, state, rb = flax_update(graphdef, params, alg, make_batch(spec["vocab_size"], batch, seq_len), 256, table,
                                    micro_rows)
    compiled = update.lower(state, rb).compile()
    holder = {"state": state}

    def call():
        holder["state"], m = compiled(holder["state"], rb)
        jax.block_until_ready(m["loss"])
    return call, compiled.as_text(), batch * seq_len


def job_update_program(job_config: Path, overrides: list[str], steps: int):
    """The trainer's own jitted update on a real batch: trains `steps` steps of `job_config`
    (evaluation, checkpoints and logging off), keeps the last prepared batch, and returns the
    call, its compiled HLO, the batch's valid tokens, its rows and a closer for the trainer."""
    from sspo_jax.train import Trainer
    from sspo_jax.train.config import load_config

    cfg = load_config(job_config, [*overrides, f"train.steps={steps}", "eval.enabled=false",
                                   "checkpoint.enabled=false", "logging.tensorboard=false",
                                   "logging.progress=false"])
    run_dir = tempfile.TemporaryDirectory(prefix="profile_update_")
    trainer = Trainer(cfg, run_dir.name, progress=False, echo=lambda s: None, resume=False)
    kept, prepare = {}, trainer.prepare

    def keeping_prepare(scored):
        kept["batch"], metrics = prepare(scored)
        return kept["batch"], metrics

    trainer.prepare = keeping_prepare
    trainer.run()
    batch = kept["batch"]
    hlo = trainer.update_fn.lower(trainer.state, batch).compile().as_text()
    holder = {"state": trainer.state}

    def call():
        holder["state"], m = trainer.update_fn(holder["state"], batch)  # the state is donated
        jax.block_until_ready(m)

    def close():
        trainer.close()
        run_dir.cleanup()
    mask = np.asarray(batch.attention_mask)
    return call, hlo, int(mask.sum()), mask.shape[0], close


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("generate", "train", "update"),
                    help="update: the trainer's update on a real batch of --job-config")
    ap.add_argument("--config", default="small", help=f"one of {sorted(CONFIGS)} (or 5M / 43M)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64, help="generate: tokens per row")
    ap.add_argument("--prompt-len", type=int, default=32, help="generate: prompt width")
    ap.add_argument("--seq-len", type=int, default=256, help="train: row width")
    ap.add_argument("--preset", default="grpo", help="train: the loss")
    ap.add_argument("--micro-rows", type=int, default=0, help="train: rows per micro-batch (0: whole batch)")
    ap.add_argument("--unroll-layers", action="store_true", help="train: unroll the layer scan")
    ap.add_argument("--job-config", type=Path, default=Path("configs/tiny_grpo.yaml"), help="update: the job")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="update: a config override")
    ap.add_argument("--steps", type=int, default=3, help="update: steps trained before profiling")
    ap.add_argument("--repeats", type=int, default=3, help="untraced timed calls before the traced one")
    ap.add_argument("--top", type=int, default=25, help="ops listed")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    config = ALIASES.get(args.config, args.config)
    close = lambda: None  # noqa: E731
    if args.what == "update":
        if not args.job_config.is_file():
            ap.error(f"--job-config {args.job_config}: no such file")
        config = args.job_config.stem
        call, hlo, tokens, args.batch, close = job_update_program(args.job_config, args.set, args.steps)
    elif config not in CONFIGS:
        ap.error(f"--config {args.config!r}: choose from {sorted(CONFIGS)}")
    elif args.what == "generate":
        call, hlo, tokens = generate_program(config, args.batch, args.new_tokens, args.prompt_len)
    else:
        call, hlo, tokens = train_program(config, args.batch, args.seq_len, args.preset, args.micro_rows,
                                          not args.unroll_layers)
    try:
        call()  # compile and warm up
        load_before = list(os.getloadavg())
        timing = summarize_times(timed_calls(call, args.repeats), tokens)
        profile = trace_ops(call, hlo, args.top)
    finally:
        close()
    payload = {"benchmark": "profile_ops", "what": args.what, "config": config, "batch": args.batch,
               "tokens_per_call": tokens, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "untraced": timing, "load_avg_before": load_before, "load_avg_after": list(os.getloadavg()),
               **profile}
    path = write_json(f"profile_{args.what}_{config}_b{args.batch}", payload, args.out)
    shares = ", ".join(f"{k} {v:.0%}" for k, v in sorted(profile["category_share"].items(), key=lambda kv: -kv[1]))
    print(f"{args.what} {config} B={args.batch}: {timing['median_s'] * 1e3:.1f} ms per call untraced; "
          f"op time by category: {shares}")
    for row in profile["top_ops"][:10]:
        print(f"  {row['share']:6.1%}  {row['ms_per_call']:8.3f} ms x {row['calls']:4d}  {row['category']:9s} "
              f"{row['shape']:28s} {row['op_name'][-60:]}")
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
