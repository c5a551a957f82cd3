"""Compiled memory of the trainer's own update for a config, without generating anything, as JSON.

Builds the `Trainer` of a config (loads the model and the optimizer state), lowers its jitted
update for a rollout batch of the config's shape (``data.batch_size x algorithm.group_size`` rows
of ``--prompt-len + --response-len`` columns) and reads XLA's buffer assignment
(``compiled.memory_analysis()``): the state passed in (parameters and optimizer moments, donated),
the outputs and the temporaries. ``peak_GiB`` = arguments + outputs - aliased + temporaries, the
most the update holds at once. Variants are ``--set`` lists, e.g. the 0.5B job in bf16 and with
fp32 master weights:

    .venv/bin/python benchmarks/bench_update_memory.py --config configs/real_qwen2.5-0.5b_sspo.yaml \\
        --variant bf16: --variant fp32_master:model.dtype=float32,model.compute_dtype=bfloat16

Writes ``benchmarks/results/update_memory.json`` (``--out`` to change the directory). The whole
process's peak is higher (compiled programs, the tokenizer, reward workers, generation's KV
cache): measure that with a real run; this isolates what the update itself holds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import RESULTS_DIR, write_json  # noqa: E402

from sspo_jax.algorithms.clipping import ENTROPY_HIST_BINS, EntropyStats  # noqa: E402
from sspo_jax.train.config import load_config  # noqa: E402
from sspo_jax.train.state import RolloutBatch  # noqa: E402
from sspo_jax.train.trainer import Trainer  # noqa: E402

GiB = 2 ** 30


def synthetic_batch(rows: int, prompt_len: int, response_len: int, segment_len: int = 12) -> RolloutBatch:
    """A `RolloutBatch` of the given shape (every response full length): shapes are all XLA sees."""
    t = prompt_len + response_len
    zeros = lambda: jnp.zeros((rows, t), jnp.float32)  # noqa: E731
    response = jnp.zeros((rows, t), bool).at[:, prompt_len:].set(True)
    segments = jnp.where(response, (jnp.arange(t)[None] - prompt_len) // segment_len, -1).astype(jnp.int32)
    return RolloutBatch(
        tokens=jnp.ones((rows, t), jnp.int32), attention_mask=jnp.ones((rows, t), bool), response_mask=response,
        old_logp=zeros(), entropy=zeros(), ref_logp=zeros(), segment_ids=segments, advantages=zeros(),
        returns=zeros(), old_values=zeros(), rewards=jnp.zeros((rows,)),
        last_prompt_index=jnp.full((rows,), prompt_len - 1, jnp.int32),
        entropy_stats=EntropyStats(jnp.float32(1), jnp.float32(1), jnp.float32(1), jnp.zeros((ENTROPY_HIST_BINS,))),
        entropy_threshold=None, prompt_width=prompt_len)


def measure(config: str, overrides: list[str], prompt_len: int, response_len: int) -> dict[str, Any]:
    """The update's compiled memory (GiB) for `config` with `overrides`."""
    cfg = load_config(config, ["checkpoint.enabled=false", "eval.enabled=false", *overrides])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir, progress=False, resume=False, echo=lambda s: None)
        try:
            rows = cfg.data.batch_size * cfg.algorithm.group_size
            t0 = time.perf_counter()
            compiled = trainer.update_fn.lower(trainer.state, synthetic_batch(rows, prompt_len, response_len)).compile()
            compile_s = time.perf_counter() - t0
        finally:
            trainer.close()
    m = compiled.memory_analysis()
    sizes = {"arguments_GiB": m.argument_size_in_bytes / GiB, "outputs_GiB": m.output_size_in_bytes / GiB,
             "aliased_GiB": m.alias_size_in_bytes / GiB, "temporaries_GiB": m.temp_size_in_bytes / GiB}
    peak = sizes["arguments_GiB"] + sizes["outputs_GiB"] - sizes["aliased_GiB"] + sizes["temporaries_GiB"]
    return {"rows": rows, "columns": prompt_len + response_len, "micro_batch_size": cfg.train.micro_batch_size,
            "num_minibatches": cfg.algorithm.num_minibatches, "dtype": cfg.model.dtype,
            "compute_dtype": cfg.model.compute_dtype or cfg.model.dtype, "moment_dtype": cfg.optim.moment_dtype,
            **{k: round(v, 3) for k, v in sizes.items()}, "peak_GiB": round(peak, 3), "compile_s": round(compile_s, 1)}


def _variant(text: str) -> tuple[str, list[str]]:
    name, sep, sets = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME:KEY=VALUE,KEY=VALUE (or NAME:)")
    return name, [s for s in sets.split(",") if s]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="YAML train config")
    ap.add_argument("--prompt-len", type=int, default=192, help="prompt columns of the batch")
    ap.add_argument("--response-len", type=int, default=None, help="response columns (default sampling.max_new_tokens)")
    ap.add_argument("--variant", type=_variant, action="append", default=None,
                    help="NAME:KEY=VALUE,... overrides of one measurement (repeatable; default one, 'config:')")
    ap.add_argument("--name", default="update_memory", help="JSON file name (without .json)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    variants = args.variant or [("config", [])]
    results = []
    for name, sets in variants:
        response_len = args.response_len or load_config(args.config, sets).sampling.max_new_tokens
        row = {"variant": name, "overrides": sets, **measure(args.config, sets, args.prompt_len, response_len)}
        print(f"{name}: peak {row['peak_GiB']:.2f} GiB (state {row['arguments_GiB']:.2f}, temporaries "
              f"{row['temporaries_GiB']:.2f}) for {row['rows']} x {row['columns']}", flush=True)
        results.append(row)
    payload = {"benchmark": "update_memory", "config": args.config, "method":
               "XLA compiled memory_analysis() of the trainer's jitted update (state donated): "
               "peak = arguments + outputs - aliased + temporaries", "jax": jax.__version__, "results": results}
    path = write_json(args.name, payload, args.out)
    print(f"wrote {path}")
    return {**payload, "path": str(path)}


if __name__ == "__main__":
    main()
