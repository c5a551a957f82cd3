"""The peer benchmark's job on sspo_jax: `Trainer` on configs/tiny_<preset>.yaml, run by bench_peers.py.

Reads the job spec that `bench_peers.py` writes (``--spec``), trains ``steps`` steps with
evaluation, checkpoints, TensorBoard and the progress bar off, and writes the per-step records
(``--out``). The phases are the trainer's own timers (`sspo_jax.train.metric_names`):
``time/generate_and_score`` (sampling, decoding and the math reward in its worker pool),
``time/stats`` (the extra no-grad forwards: reference log-probs for the KL term, old log-probs
where the algorithm needs them) and ``time/update`` (loss, gradient, clipping and the AdamW step);
``time/step`` is their sum. Each record also carries the update's model FLOPs over the batch's
valid (non-padding) tokens (`common.rows_model_flops`) and the tokens the update computed (rows x
trimmed width), and the result the matmul peak measured in this process before training, so
that `bench_peers.py` can report the update's utilisation of the machine. Each step's prompts
are checked against the shared prompt file that the peer frameworks read, so every framework
trains on the same prompts in the same order::

    .venv/bin/python benchmarks/peers/sspo_jax_job.py --spec SPEC.json --out RECORDS.json
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(REPO / "benchmarks"))
from common import measure_matmul_peak, rows_model_flops  # noqa: E402
from job_io import job_args, read_prompts, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    spec, out = job_args(__doc__, argv)
    from sspo_jax.train import Trainer, metric_names as M
    from sspo_jax.train.config import load_config

    overrides = [*spec["sspo_jax_overrides"], f"train.steps={spec['steps']}", "eval.enabled=false",
                 "checkpoint.enabled=false", "logging.tensorboard=false", "logging.progress=false"]
    cfg = load_config(REPO / spec["sspo_jax_config"], overrides)
    expected = read_prompts(spec["prompts"])
    peak = measure_matmul_peak("float32", 2048, 7)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_peers_sspo_jax_") as run_dir:
        trainer = Trainer(cfg, run_dir, progress=False, echo=lambda s: None, resume=False)
        seen: list[list[tuple[str, str]]] = []
        next_batch = trainer.batcher.next_batch

        def recording_next_batch():
            batch = next_batch()
            g = batch.group_size
            seen.append(list(zip(batch.prompts[::g], batch.golds[::g])))
            return batch

        trainer.batcher.next_batch = recording_next_batch
        spec_model = json.loads((Path(trainer.model_dir) / "config.json").read_text())
        work: list[dict] = []  # one entry per prepared batch (one update call per step here)
        prepare = trainer.prepare

        def recording_prepare(scored):  # inside the stats phase: the update's timer sees nothing of it
            batch, metrics = prepare(scored)
            mask = np.asarray(batch.attention_mask)
            lengths = mask.sum(axis=1).tolist()
            work.append({"update_model_flops": rows_model_flops(spec_model, lengths),
                         "update_valid_tokens": int(sum(lengths)), "update_computed_tokens": int(mask.size),
                         "update_width": int(mask.shape[1])})
            return batch, metrics

        trainer.prepare = recording_prepare
        build_s = time.perf_counter() - t0
        try:
            trainer.run()
        finally:
            trainer.close()
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines if line.strip()]
    if len(work) != len(metrics):
        raise SystemExit(f"error: {len(work)} prepared batches for {len(metrics)} steps; the FLOP count needs one each")
    records, rows = [], cfg.data.batch_size * cfg.algorithm.group_size
    for m in metrics:
        records.append({"step": m["step"], "step_s": m[M.TIME_STEP],
                        "generate_and_reward_s": m[M.TIME_GENERATE_AND_SCORE], "extra_forward_s": m[M.TIME_STATS],
                        "update_s": m[M.TIME_UPDATE],
                        "reward_mean": m[M.REWARD_MEAN], "response_length_mean": m[M.RESPONSE_LENGTH_MEAN],
                        "responses": rows, **work[len(records)]})
    want = [[(r["prompt"], r["gold"]) for r in expected if r["step"] == s] for s in range(1, len(seen) + 1)]
    if seen != want:
        raise SystemExit("error: the trainer's prompts differ from the shared prompt file; re-export it")
    from importlib import metadata

    return write_result(out, "sspo_jax", spec["preset"], records, build_s=build_s, prompts_match_shared_file=True,
                        rows_per_step=rows, matmul_peak=peak,
                        versions={p: metadata.version(p) for p in ("jax", "flax", "optax")})


if __name__ == "__main__":  # the reward pool spawns workers that import this module
    main()
