"""Smoke test of the benchmark scripts: they import, and bench_rollout runs end to end on a tiny model.

Timings are not asserted (they depend on the machine); only the shape of the JSON is checked.
"""

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.mark.parametrize("name", ["bench_losses", "bench_model", "bench_rollout", "bench_rewards", "bench_train", "bench_iteration", "run"])
def test_benchmark_modules_import(name):
    mod = importlib.import_module(name)
    assert callable(mod.main)


def test_bench_rollout_tiny_writes_wellformed_json(tmp_path):
    import bench_rollout

    payload = bench_rollout.main(["--configs", "tiny", "--batches", "2", "--prompt-len", "8",
                                  "--new-tokens", "4", "--repeats", "1", "--out", str(tmp_path)])
    path = tmp_path / "rollout.json"
    assert Path(payload["path"]) == path
    data = json.loads(path.read_text())
    assert {"machine", "results", "configs", "load_avg_at_start", "sampling"} <= set(data)
    assert data["configs"]["tiny"]["vocab_size"] == 256
    (row,) = data["results"]
    assert (row["config"], row["batch"], row["new_tokens"], row["generated_tokens_per_call"]) == ("tiny", 2, 4, 8)
    for side in ("flax", "torch"):
        assert row[side]["median_s"] > 0 and row[side]["tokens_per_s_median"] > 0
        assert row[side]["repeats"] == 1
    assert row["flax"]["first_call_s"] > 0 and row["flax"]["traces"] <= 1  # 0 if another test compiled it
    assert row["ratio_flax_over_torch"] > 0
    assert 0.0 <= row["greedy_agreement"]["token_fraction"] <= 1.0
