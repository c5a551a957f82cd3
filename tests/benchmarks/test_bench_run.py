"""The benchmark harness: the summary is built from the JSON results, the README table is that
summary, and the train-step and RL-iteration benchmarks run end to end at toy sizes.

Timings are never asserted (they depend on the machine); the structure and the arithmetic of the
summary are.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

pytest.importorskip("torch")
pytest.importorskip("transformers")

import run as bench_run  # noqa: E402


@pytest.fixture
def results_copy(tmp_path):
    for path in (BENCH_DIR / "results").glob("*.json"):
        if path.name != "summary.json":
            shutil.copy(path, tmp_path / path.name)
    return tmp_path


def test_summary_figures_come_from_the_result_files(results_copy):
    summary = bench_run.summarize(results_copy)
    assert json.loads((results_copy / "summary.json").read_text())["figures"] == summary["figures"]
    rollout = json.loads((results_copy / "rollout.json").read_text())
    gen = [f for f in summary["figures"] if f["benchmark"] == "rollout"]
    assert len(gen) == len(rollout["results"])
    for fig, row in zip(gen, rollout["results"]):
        assert fig["value"] == pytest.approx(row["ratio_flax_over_torch"])
        assert fig["met"] == (row["ratio_flax_over_torch"] >= 3)
        assert fig["min"] <= fig["value"] <= fig["max"]
    model = json.loads((results_copy / "model.json").read_text())["token_stats_memory"]
    (mem,) = [f for f in summary["figures"] if f["benchmark"] == "model"]
    assert mem["value"] == pytest.approx(model["chunked"]["forward_backward_temp_bytes"]
                                         / model["naive"]["forward_backward_temp_bytes"])
    table = (results_copy / "summary.md").read_text()
    assert table.count("\n| ") == len(summary["figures"]) + 2  # header, separator, one row per figure
    for fig in summary["figures"]:
        assert fig["name"] in table


def test_unreadable_result_is_reported_not_fatal(tmp_path):
    (tmp_path / "rollout.json").write_text(json.dumps({"results": [{"config": "x"}]}))
    summary = bench_run.summarize(tmp_path)
    assert "KeyError" in summary["benchmarks"]["rollout"]["error"]
    assert summary["figures"] == []


def test_readme_table_is_the_committed_summary():
    readme = (REPO / "README.md").read_text()
    assert bench_run.START in readme and bench_run.END in readme
    between = readme.split(bench_run.START, 1)[1].split(bench_run.END, 1)[0]
    assert between.strip() == (BENCH_DIR / "results" / "summary.md").read_text().strip(), (
        "README's benchmark table differs from benchmarks/results/summary.md: "
        "regenerate with `python benchmarks/run.py --summarize-only --readme`")


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench_run.START}\nold table\n{bench_run.END}\noutro\n")
    bench_run.update_readme("| new |\n", readme)
    assert readme.read_text() == f"intro\n{bench_run.START}\n| new |\n{bench_run.END}\noutro\n"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        bench_run.update_readme("| new |\n", readme)


def test_bench_train_tiny_writes_wellformed_json(tmp_path):
    import bench_train

    payload = bench_train.main(["--configs", "tiny", "--batch", "4", "--seq-len", "16", "--repeats", "1",
                                "--warmup", "0", "--extra-presets", "", "--matmul-n", "256",
                                "--micro-rows", "2", "--unroll-layers", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "train.json").read_text())
    assert Path(payload["path"]) == tmp_path / "train.json"
    assert data["args"]["micro_rows"] == 2 and data["args"]["unroll_layers"] is True
    (row,) = data["results"]
    assert (row["config"], row["batch"], row["seq_len"], row["tokens_per_step"]) == ("tiny", 4, 16, 64)
    # the GEMM comparison: one micro-batch's rows (2 x 16) through XLA and torch at each model shape
    assert data["matmul_peak_torch"]["flops_per_s_median"] > 0
    assert row["gemm_rows"] == 32
    assert {(g["m"], g["k"], g["n"]) for g in row["gemms"]} >= {(32, 32, 64), (32, 64, 32), (32, 32, 256)}
    assert all(g["xla_gflops"] > 0 and g["torch_gflops"] > 0 for g in row["gemms"])
    assert "torch / XLA GEMM" in data["table"][0]
    for side in ("flax_grpo", "torch"):
        assert row[side]["median_s"] > 0 and row[side]["mfu"] > 0
    assert row["flax_grpo"]["skipped"] == 0.0
    assert row["ratio_flax_over_torch"] > 0
    flops = bench_train.model_flops_per_token(bench_train.CONFIGS["tiny"], 32)
    assert flops["total"] == flops["dense"] + flops["attention"]
    assert data["matmul_peak"]["flops_per_s_median"] > 0
    fig_names = [f["name"] for f in bench_run.figures_train(data)]
    assert any("flax / torch" in n for n in fig_names) and any("MFU" in n for n in fig_names)
    with pytest.raises(SystemExit, match="must divide"):
        bench_train.main(["--configs", "tiny", "--batch", "4", "--seq-len", "16", "--micro-rows", "3",
                          "--repeats", "1", "--matmul-n", "64", "--extra-presets", "", "--out", str(tmp_path)])


def test_summary_names_each_cpu_when_they_differ():
    same = {"benchmarks": {"train": {"cpu_model": "A"}, "rollout": {"cpu_model": "A"}}}
    assert bench_run._cpu_line(same) == []
    mixed = {"benchmarks": {"train": {"cpu_model": "A"}, "rollout": {"cpu_model": "B"}, "model": {}}}
    (_, line) = bench_run._cpu_line(mixed)
    assert line == "They ran on different CPUs: train on A, rollout on B, model on an unrecorded CPU."


def test_bench_iteration_tiny_writes_wellformed_json(tmp_path):
    import bench_iteration

    payload = bench_iteration.main(["--batch-size", "1", "--max-new-tokens", "6", "--warmup", "1",
                                    "--iterations", "1", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "iteration.json").read_text())
    assert data["rows_per_iteration"] == 8
    for side in ("sspo_jax", "torch"):
        assert data[side]["iteration"]["median_s"] > 0
        assert 0 < data[side]["response_length_mean"] <= 6
    assert payload["ratio_iteration_time_torch_over_sspo_jax"] > 0
    (fig,) = bench_run.figures_iteration(data)
    assert fig["value"] == pytest.approx(data["ratio_iteration_time_torch_over_sspo_jax"])
