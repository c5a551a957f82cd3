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


def test_bench_update_memory_reports_each_variant(tmp_path):
    import bench_update_memory

    config = str(BENCH_DIR.parent / "configs" / "tiny_grpo.yaml")  # one minibatch of 256 rows
    payload = bench_update_memory.main(["--config", config, "--prompt-len", "8", "--response-len", "8",
                                        "--variant", "whole:train.micro_batch_size=256",
                                        "--variant", "micro:train.micro_batch_size=32", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "update_memory.json").read_text())
    whole, micro = data["results"]
    assert (whole["variant"], whole["micro_batch_size"], micro["variant"], micro["micro_batch_size"]) == \
        ("whole", 256, "micro", 32)
    assert whole["rows"] == 256 and whole["columns"] == 16
    assert whole["arguments_GiB"] == micro["arguments_GiB"] > 0      # the same state
    assert whole["temporaries_GiB"] != micro["temporaries_GiB"]      # the override reached the update
    for row in (whole, micro):
        assert row["peak_GiB"] == pytest.approx(
            row["arguments_GiB"] + row["outputs_GiB"] - row["aliased_GiB"] + row["temporaries_GiB"], abs=2e-3)
    assert payload["path"] == str(tmp_path / "update_memory.json")


def test_bench_update_memory_refuses_a_malformed_variant():
    import bench_update_memory

    with pytest.raises(SystemExit):
        bench_update_memory.main(["--config", "x.yaml", "--variant", "no-colon"])


def test_bench_losses_runs_every_preset(tmp_path):
    """Every registered preset, Clip-Cov's random token picks included, goes through the loss benchmark."""
    import bench_losses

    from sspo_jax.algorithms import presets

    payload = bench_losses.main(["--batch", "2", "--seq", "32", "--repeats", "1", "--out", str(tmp_path)])
    assert [r["preset"] for r in payload["results"]] == list(presets.names())
    for r in payload["results"]:
        assert r["loss_and_grad"]["median_s"] > 0 and r["valid_tokens_per_s"] > 0
