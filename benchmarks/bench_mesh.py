"""Mesh benchmark: the device work of one RL step versus the device-mesh shape (data, fsdp, tensor).

For each mesh shape, and for one device without a mesh, on a randomly initialised Qwen2 of
``--config`` it times the three device phases of `sspo_jax.train.Trainer.step`:

* **generate**: `sspo_jax.rollout.generate` of ``--batch`` prompts x ``--group-size`` samples at
  temperature 1 (``--new-tokens`` tokens, no stop token, so every row decodes the same length),
  prompts split over data x fsdp and parameters placed by `sspo_jax.parallel.shard_params`;
* **stats**: the statistics pass (`make_stats_fn`: old log-probs and entropies, chunked head);
* **update**: one update (`make_update_fn`, the ``--preset`` loss, AdamW with clipping,
  optimizer state sharded like its parameters) on the generated batch;

and records ``step`` = the sum of the three medians. Timings are the median / min / max / stdev
over ``--repeats`` calls after ``--warmup`` calls; the first call of each phase (tracing and
compilation included) is reported separately as ``first_call_s``.

On CPU the devices are simulated (``--xla_force_host_platform_device_count=8`` splits one host's
cores into 8 "devices"): sharding only adds partitioning and communication overhead there, so the
numbers are informational (``"informational": true`` in the JSON) and show what each layout costs,
not a speed-up. On a GPU or TPU machine the same command uses the real devices; shapes that need
more devices than are present are listed under ``skipped``.

Writes ``benchmarks/results/mesh.json`` (or ``--out DIR/mesh.json``)::

    .venv/bin/python benchmarks/bench_mesh.py [--config small] [--shapes 8x1x1,2x4x1,1x4x2,2x2x2,1]
    .venv/bin/python benchmarks/bench_mesh.py --smoke     # toy sizes and two shapes, for the tests
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# 8 simulated devices when the host platform is used (no effect on GPUs/TPUs); before JAX starts
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import RESULTS_DIR, time_repeats, write_json  # noqa: E402

from sspo_jax.algorithms import presets  # noqa: E402
from sspo_jax.algorithms.clipping import segment_entropy_stats  # noqa: E402
from sspo_jax.models import Qwen2Config, Qwen2ForCausalLM  # noqa: E402
from sspo_jax.parallel import MeshConfig, batch_sharding, make_mesh, replicated, shard_like, shard_params  # noqa: E402
from sspo_jax.rollout import SamplingConfig, generate  # noqa: E402
from sspo_jax.train.state import RolloutBatch, TrainState  # noqa: E402
from sspo_jax.train.step import Models, make_stats_fn, make_update_fn  # noqa: E402

CONFIGS = {
    "tiny": dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "small": dict(vocab_size=4096, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "0.5B": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
}
DEFAULT_SHAPES = "8x1x1,2x4x1,1x4x2,2x2x2,1"
SMOKE_SHAPES = "2x2x2,1"


def _parse_shapes(text: str) -> list[tuple[int, ...]]:
    shapes = []
    for item in text.split(","):
        dims = tuple(int(d) for d in item.strip().lower().split("x") if d)
        if len(dims) not in (1, 3) or (len(dims) == 1 and dims != (1,)):
            raise SystemExit(f"--shapes: {item!r} must be DATAxFSDPxTENSOR (e.g. 2x2x2) or 1 (one device)")
        shapes.append(dims)
    return shapes


def _rollout_batch(gen, rows_sharding, rng: np.random.Generator, stats) -> RolloutBatch:
    """The update's batch from a generation result (random advantages; segments of 3 tokens)."""
    n, t = gen.tokens.shape
    rmask = gen.response_mask
    seg = jnp.where(rmask, jnp.cumsum(rmask, axis=1) // 3, -1).astype(jnp.int32)
    put = (lambda x: jax.device_put(x, rows_sharding(np.ndim(x)))) if rows_sharding else jnp.asarray
    adv = put(np.repeat(rng.normal(size=(n, 1)), t, axis=1).astype(np.float32))
    zeros = put(np.zeros((n, t), np.float32))
    return RolloutBatch(tokens=gen.tokens, attention_mask=gen.attention_mask, response_mask=rmask,
                        old_logp=stats["old_logp"], entropy=stats["entropy"], ref_logp=zeros, segment_ids=seg,
                        advantages=adv, returns=zeros, old_values=zeros,
                        rewards=put(rng.random(n).astype(np.float32)),
                        last_prompt_index=put(np.full((n,), gen.prompt_len - 1, np.int32)),
                        entropy_stats=segment_entropy_stats(stats["entropy"], rmask, seg))


def bench_shape(shape: tuple[int, ...], devices: list, graphdef, params, prompts: np.ndarray, mask: np.ndarray,
                args) -> dict:
    """Times generate, stats and update on one mesh shape ((1,) = one device, no mesh)."""
    alg = presets.get(args.preset)
    models = Models(policy=graphdef)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5))
    if shape == (1,):
        mesh = None
        params = jax.device_put(params, devices[0])
        opt_state = tx.init(params)
        rows = None
    else:
        mesh = make_mesh(MeshConfig(*shape), devices[:int(np.prod(shape))])
        params = shard_params(params, mesh)
        opt_state = shard_like(tx.init(params), params, mesh)
        rows = lambda ndim: batch_sharding(mesh, ndim)  # noqa: E731
    key = jax.random.key(0)
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(key), params=params, opt_state=opt_state)
    if mesh is not None:
        state = state.replace(step=jax.device_put(state.step, replicated(mesh)),
                              rng=jax.device_put(state.rng, replicated(mesh)))
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0, eos_token_ids=(),
                              prompt_buckets=(prompts.shape[1],))
    n = prompts.shape[0] * args.group_size
    stats_fn = make_stats_fn(models, alg, chunk_size=args.chunk, micro_rows=n)
    update_fn = make_update_fn(models, alg, tx, None, chunk_size=args.chunk, micro_rows=n, donate=False)

    def run_generate():
        out = generate((graphdef, state.params), prompts, mask, sampling, key, group_size=args.group_size, mesh=mesh)
        jax.block_until_ready(out.tokens)
        return out

    t0 = time.perf_counter()
    gen = run_generate()
    first = {"generate": time.perf_counter() - t0}
    last_prompt = jnp.full((n,), gen.prompt_len - 1, jnp.int32)
    if rows is not None:
        last_prompt = jax.device_put(last_prompt, rows(1))

    def run_stats():
        out = stats_fn(state, gen.tokens, gen.attention_mask, last_prompt)
        jax.block_until_ready(out["old_logp"])
        return out

    t0 = time.perf_counter()
    stats = run_stats()
    first["stats"] = time.perf_counter() - t0
    batch = _rollout_batch(gen, rows, np.random.default_rng(1), stats)

    def run_update():
        new_state, metrics = update_fn(state, batch)
        jax.block_until_ready((new_state.params, metrics))

    t0 = time.perf_counter()
    run_update()
    first["update"] = time.perf_counter() - t0
    result = {"mesh": "x".join(map(str, shape)) if mesh is not None else "1 device", "shape": list(shape),
              "devices": 1 if mesh is None else int(np.prod(shape)), "rows": n,
              "generated_tokens": n * args.new_tokens, "first_call_s": first}
    for name, fn in (("generate", run_generate), ("stats", run_stats), ("update", run_update)):
        result[name] = time_repeats(fn, args.repeats, warmup=args.warmup)
    step = sum(result[k]["median_s"] for k in ("generate", "stats", "update"))
    result["step"] = {"median_s": step, "tokens_per_s": n * args.new_tokens / step}
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small", choices=sorted(CONFIGS))
    ap.add_argument("--shapes", default=None,
                    help=f"comma-separated DATAxFSDPxTENSOR, or 1 (one device); default {DEFAULT_SHAPES} "
                         f"({SMOKE_SHAPES} with --smoke)")
    ap.add_argument("--batch", type=int, default=4, help="prompts per batch")
    ap.add_argument("--group-size", type=int, default=4, help="samples per prompt (rows = batch x group size)")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=1024, help="vocabulary chunk of the log-prob head")
    ap.add_argument("--preset", default="sspo")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="toy sizes (tiny config, 1 repeat) for the tests")
    ap.add_argument("--out", help="output directory (default benchmarks/results)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.config, args.batch, args.group_size, args.prompt_len, args.new_tokens = "tiny", 2, 4, 8, 4
        args.repeats, args.warmup, args.chunk = 1, 0, 64
    args.shapes = args.shapes or (SMOKE_SHAPES if args.smoke else DEFAULT_SHAPES)

    devices = jax.devices()
    cfg = Qwen2Config(**CONFIGS[args.config], rope_theta=10_000.0, max_position_embeddings=4096)
    graphdef, params = nnx.split(Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0)))
    params = jax.device_get(params)  # host copy: each shape places its own
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, cfg.vocab_size, (args.batch, args.prompt_len)).astype(np.int32)
    mask = np.ones_like(prompts)
    mask[::2, : args.prompt_len // 4] = 0  # some left padding

    results, skipped = [], []
    for shape in _parse_shapes(args.shapes):
        need = int(np.prod(shape))
        rows = args.batch * args.group_size
        if need > len(devices):
            skipped.append({"mesh": "x".join(map(str, shape)),
                            "reason": f"needs {need} devices, {len(devices)} present"})
            continue
        if len(shape) == 3 and rows % (shape[0] * shape[1]):
            skipped.append({"mesh": "x".join(map(str, shape)),
                            "reason": f"{rows} rows do not split over data x fsdp = {shape[0] * shape[1]}"})
            continue
        print(f"[mesh] {shape} ...", flush=True)
        results.append(bench_shape(shape, devices, graphdef, params, prompts, mask, args))
        r = results[-1]
        print(f"[mesh] {r['mesh']}: generate {r['generate']['median_s'] * 1e3:.1f} ms, stats "
              f"{r['stats']['median_s'] * 1e3:.1f} ms, update {r['update']['median_s'] * 1e3:.1f} ms", flush=True)

    backend = jax.default_backend()
    payload = {
        "informational": backend == "cpu",
        "note": ("simulated CPU devices share one host's cores: mesh shapes show partitioning overhead, not speed-up"
                 if backend == "cpu" else f"{len(devices)} {devices[0].device_kind} device(s)"),
        "args": vars(args), "model_config": CONFIGS[args.config], "backend": backend, "device_count": len(devices),
        "results": results, "skipped": skipped,
    }
    path = write_json("mesh", payload, Path(args.out) if args.out else RESULTS_DIR)
    print(f"wrote {path}")
    payload["path"] = str(path)
    return payload


if __name__ == "__main__":
    main()
