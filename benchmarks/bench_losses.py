"""Loss-core benchmark: forward + gradient of each preset's policy loss at B=64, T=4096.

Measures compile time (lower + compile) and steady-state time per call of
``jax.jit(jax.value_and_grad(loss))`` with segment ids precomputed (they are computed once per
rollout), plus the time of `segment_ids` itself. Writes ``benchmarks/results/losses.json``.

    python benchmarks/bench_losses.py [--batch 64] [--seq 4096] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import time_repeats, write_json  # noqa: E402

from sspo_jax.algorithms import DelimiterTable, policy_loss, presets, segment_ids  # noqa: E402


def make_inputs(b: int, t: int, vocab: int = 4096, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (b, t)).astype(np.int32)
    mask = np.zeros((b, t), bool)
    for i in range(b):
        start = rng.integers(0, t // 8)
        mask[i, start:start + rng.integers(t // 4, t - start)] = True
    old = -np.abs(rng.normal(1.5, 0.5, (b, t))).astype(np.float32)
    ids = np.arange(vocab)
    table = DelimiterTable(jnp.asarray(ids % 13 == 0), jnp.asarray(ids == 13), jnp.asarray(ids % 10 < 3),
                           jnp.asarray(ids % 10 < 3))
    return dict(tokens=jnp.asarray(tokens), mask=jnp.asarray(mask), old=jnp.asarray(old),
                logp=jnp.asarray(old + 0.2 * rng.normal(size=(b, t)).astype(np.float32)),
                ref=jnp.asarray(old + 0.05 * rng.normal(size=(b, t)).astype(np.float32)),
                ent=jnp.asarray(rng.uniform(0.1, 3.0, (b, t)).astype(np.float32)),
                adv=jnp.asarray(rng.normal(size=(b,)).astype(np.float32)), table=table)


def bench_preset(name: str, x: dict, repeats: int) -> dict:
    cfg = presets.get(name)
    seg_fn = jax.jit(lambda tk, m: segment_ids(tk, m, x["table"], cfg.segmentation))
    seg = seg_fn(x["tokens"], x["mask"]).block_until_ready()

    def loss(lp, old, adv, mask, seg, ent, ref):
        # Clip-Cov draws its clipped tokens at random: one fixed key (the trainer folds one per step)
        rng = jax.random.key(0) if cfg.uses_rng else None
        out = policy_loss(cfg, lp, old, adv, mask, segment_ids=seg, entropy=ent, ref_logp=ref, rng=rng)
        return out.loss, out.metrics

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    args = (x["logp"], x["old"], x["adv"], x["mask"], seg, x["ent"], x["ref"])
    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    timing = time_repeats(lambda: jax.block_until_ready(compiled(*args)), repeats)
    seg_timing = time_repeats(lambda: seg_fn(x["tokens"], x["mask"]).block_until_ready(), repeats)
    tokens = int(np.asarray(x["mask"]).sum())
    return {"preset": name, "compile_s": compile_s, "loss_and_grad": timing,
            "valid_tokens_per_s": tokens / timing["median_s"], "segment_ids": seg_timing}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--presets", default=",".join(presets.names()))
    ap.add_argument("--out", default=None, help="output directory (default benchmarks/results)")
    args = ap.parse_args(argv)
    x = make_inputs(args.batch, args.seq)
    results = [bench_preset(n, x, args.repeats) for n in args.presets.split(",")]
    payload = {"benchmark": "losses", "batch": args.batch, "seq": args.seq, "results": results}
    path = write_json("losses", payload, args.out)
    for r in results:
        print(f"{r['preset']:>11}: compile {r['compile_s']:.2f}s  loss+grad {1e3 * r['loss_and_grad']['median_s']:.1f} ms"
              f"  segment_ids {1e3 * r['segment_ids']['median_s']:.1f} ms")
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
