"""`sspo-jax compare` end to end: two presets x one seed x two steps of the shipped tiny model as real
`sspo-jax train` subprocesses (two at a time), then summary.json, the PNG figures and report.md,
checked against the runs' own metrics.jsonl; a second call resumes (skips both runs), and
--from-summary renders the same report."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import yaml

from sspo_jax.cli import build_parser, main
from sspo_jax.tools.compare import command
from sspo_jax.tools.compare.plots import FIGURES

# Two real training subprocesses (JAX compilation dominates): ~45 s of CPU time in all, over the
# project's 20 s mark for slow tests.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LABELS = ("grpo", "sspo")


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """The comparison, run once. eval.size x eval.samples = the training rows (2 prompts x 8), so that
    the sampled evaluation reuses the training sampler's compilation."""
    tmp = tmp_path_factory.mktemp("compare")
    spec = {
        "name": "smoke", "description": "Two presets, **two steps**.", "seeds": [0],
        "findings": "Nothing to see in **two steps**.",
        "common": {"train.steps": 2, "data.batch_size": 2, "algorithm.num_minibatches": 2, "eval.every": 1,
                   "eval.size": 16, "eval.batch_size": 16, "eval.samples": 1, "rewards.workers": 0,
                   "checkpoint.every": 1, "logging.progress": False, "logging.tensorboard": False},
        "runs": [{"label": p, "config": str(ROOT / "configs" / f"tiny_{p}.yaml")} for p in LABELS],
        "accuracy_threshold": 0.25, "collapse": {"margin": 0.1, "last_evals": 2},
    }
    path = tmp / "smoke.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    argv = ["compare", str(path), "--jobs", "2", "--runs-dir", str(tmp / "runs"), "--out", str(tmp / "report")]
    lines: list[str] = []
    assert command.run(build_parser().parse_args(argv), echo=lines.append) == 0
    return tmp, argv, lines


def _summary(tmp: Path) -> dict:
    return json.loads((tmp / "report" / "summary.json").read_text())


def test_each_run_finishes_and_prints_a_progress_line(compared):
    tmp, _, lines = compared
    done = [ln for ln in lines if re.match(r"\[\d/2\] (grpo|sspo) seed 0: finished in \d+ s", ln)]
    assert len(done) == 2, lines
    for label in LABELS:
        run = tmp / "runs" / label / "seed0"
        assert json.loads((run / "summary.json").read_text())["steps"] == 2
        marker = json.loads((run / "compare.json").read_text())
        assert marker["status"] == "finished" and marker["returncode"] == 0 and marker["jobs"] == 2


def test_summary_json_holds_the_runs_numbers(compared):
    tmp, _, _ = compared
    summary = _summary(tmp)
    assert summary["format"] == 1 and summary["spec"]["name"] == "smoke"
    assert summary["spec"]["accuracy_key"] == "eval/accuracy" and "versions" in summary["machine"]
    assert [lab["label"] for lab in summary["labels"]] == list(LABELS)
    for lab in summary["labels"]:
        (rec,) = lab["per_seed"]
        assert rec["status"] == "finished" and rec["seed"] == 0 and not rec["collapsed"]
        assert rec["series"]["step"] == [1, 2] and rec["evals"]["step"] == [0, 1, 2]
        metrics = [json.loads(x) for x in (Path(rec["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        by_step = {m["step"]: m for m in metrics}
        assert rec["initial_accuracy"] == by_step[0]["eval/accuracy"]
        assert rec["final_accuracy"] == by_step[2]["eval/accuracy"]
        assert rec["best_accuracy"] == max(by_step[1]["eval/accuracy"], by_step[2]["eval/accuracy"])
        for key in ("policy/clip_frac_low", "policy/clip_frac_high", "old_entropy_mean", "response_length/mean"):
            assert rec["series"][key] == [by_step[1][key], by_step[2][key]]
        low = (by_step[1]["policy/clip_frac_low"] + by_step[2]["policy/clip_frac_low"]) / 2
        assert rec["clip_frac_low_mean"] == pytest.approx(low)
        agg = lab["aggregate"]
        assert agg["seeds"] == 1 and agg["finished"] == 1 and agg["collapsed"] == 0
        assert agg["final_accuracy_mean"] == pytest.approx(rec["final_accuracy"]) and agg["final_accuracy_std"] == 0
        assert agg["clip_frac_total_mean"] == pytest.approx(rec["clip_frac_low_mean"] + rec["clip_frac_high_mean"])
        assert agg["wall_time_s_mean"] > 0
        reach = [s for s, a in zip(rec["evals"]["step"], rec["evals"]["eval/accuracy"]) if a >= 0.25]
        assert rec["steps_to_threshold"] == (reach[0] if reach else None)


def test_figures_are_small_valid_pngs(compared):
    tmp, _, _ = compared
    for name in FIGURES.values():
        data = (tmp / "report" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", name
        width, height = struct.unpack(">II", data[16:24])
        assert 300 <= width <= 1200 and 200 <= height <= 500 and len(data) < 200_000, (name, width, height)


def _results_rows(report: str) -> dict[str, list[str]]:
    section = report.split("## Results", 1)[1].split("\n\n", 2)[1]
    rows = [ln.strip("|").split(" | ") for ln in section.splitlines() if ln.startswith("| ")][1:]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows}


def test_report_tables_match_summary_json(compared):
    tmp, _, _ = compared
    report = (tmp / "report" / "report.md").read_text()
    summary = _summary(tmp)
    assert report.startswith("# Algorithm comparison: smoke") and "Two presets, **two steps**." in report
    findings = report.index("## What the numbers show\n\nNothing to see in **two steps**.")
    assert report.index("## Results") < findings < report.index("## Curves")
    for file in FIGURES.values():  # images linked relative to the report
        assert f"]({file})" in report and (tmp / "report" / file).is_file()
    rows = _results_rows(report)
    assert sorted(rows) == sorted(LABELS)
    for lab in summary["labels"]:
        cells, agg = rows[lab["label"]], lab["aggregate"]
        final, spread = (float(x) for x in re.match(r"([\d.]+) ± ([\d.]+)", cells[2]).groups())
        assert final == pytest.approx(agg["final_accuracy_mean"], abs=6e-4) and spread == 0
        assert float(cells[1]) == pytest.approx(agg["initial_accuracy_mean"], abs=6e-4)
        assert float(cells[3]) == pytest.approx(agg["best_accuracy_mean"], abs=6e-4)
        for cell, key in zip(cells[4:7], ("clip_frac_low_mean", "clip_frac_high_mean", "clip_frac_total_mean")):
            assert float(cell) == pytest.approx(agg[key], abs=6e-5)
        median = agg["steps_to_threshold_median"]
        assert cells[7].startswith("not reached" if median is None else f"{median:g} (")
        assert cells[8] == "0/1"
        assert cells[9] == f"{agg['wall_time_s_mean']:.0f} s"
    assert "| grpo | 0 | finished |" in report and "| sspo | 0 | finished |" in report
    assert "collapsed*: a run counts as collapsed when it failed" in report


def test_running_again_skips_finished_runs_and_the_report_rerenders_from_the_summary(compared, capsys):
    tmp, argv, _ = compared
    before = (tmp / "report" / "report.md").read_text()
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("already finished, skipped") == 2
    (tmp / "report" / "report.md").unlink()
    assert main([*argv, "--from-summary"]) == 0
    after = (tmp / "report" / "report.md").read_text()
    strip = lambda text: re.sub(r"Generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", "", text)  # noqa: E731
    assert strip(after) == strip(before)
