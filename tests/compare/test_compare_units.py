"""The comparison's judgement logic on synthetic metric series (collapse, steps to a threshold,
aggregates), spec validation errors, and the runner's handling of a failing subprocess; no JAX."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from sspo_jax.algorithms.config import ConfigError
from sspo_jax.tools.compare import runner
from sspo_jax.tools.compare.command import collect
from sspo_jax.tools.compare.report import render_report
from sspo_jax.tools.compare.spec import CollapseRule, CompareSpec, RunSpec, load_spec, override_string, spec_from_mapping
from sspo_jax.tools.compare.summary import (FAILED, FINISHED, aggregate, build_summary, collapse_reason, extract_series,
                                      first_reach, median_steps, seed_result)

ROOT = Path(__file__).resolve().parents[2]
RULE = CollapseRule(margin=0.05, last_evals=2)


def _spec(**kw) -> CompareSpec:
    return CompareSpec(name="t", runs=(RunSpec("a", str(ROOT / "configs/tiny_sspo.yaml")),), **kw)


# ---- collapse ---------------------------------------------------------------------------------------

def test_a_failed_or_nan_run_is_collapsed():
    assert collapse_reason(FAILED, [0, 10], [0.4, 0.41], RULE, error="error: 3 consecutive steps") \
        == "failed: error: 3 consecutive steps"
    assert "non-finite `policy/loss`" in collapse_reason(FINISHED, [0, 10], [0.4, 0.45], RULE,
                                                         nonfinite=["policy/loss"])


def test_a_run_that_recovers_is_not_collapsed_and_one_that_stays_down_is():
    steps = [0, 10, 20, 30, 40]
    assert collapse_reason(FINISHED, steps, [0.40, 0.20, 0.10, 0.30, 0.39], RULE) is None   # recovered
    assert collapse_reason(FINISHED, steps, [0.40, 0.41, 0.42, 0.43, 0.30], RULE) is None   # only the last eval
    reason = collapse_reason(FINISHED, steps, [0.40, 0.41, 0.42, 0.30, 0.20], RULE)
    assert reason is not None and "0.350" in reason and "last 2" in reason
    assert collapse_reason(FINISHED, steps, [0.40, 0.41, 0.42, 0.36, 0.36], RULE) is None   # within the margin
    assert collapse_reason(FINISHED, [0, 10], [0.4, 0.1], CollapseRule(0.05, 3)) is not None  # fewer evals than K
    assert collapse_reason(FINISHED, [0], [0.4], RULE) is None


def test_seed_result_from_metric_records_with_a_nan():
    records = [{"step": 0, "eval/accuracy": 0.40},
               {"step": 1, "policy/clip_frac_low": 0.1, "policy/clip_frac_high": 0.3, "policy/loss": 0.5},
               {"step": 2, "policy/clip_frac_low": 0.3, "policy/clip_frac_high": "nan", "policy/loss": "nan",
                "skipped_updates": 4.0, "eval/accuracy": 0.5},
               {"step": 3, "policy/clip_frac_low": 0.2, "policy/clip_frac_high": 0.1, "policy/loss": 0.1,
                "eval/accuracy": 0.45}]
    series, evals = extract_series(records, "eval/accuracy")
    assert series["step"] == [1, 2, 3] and series["policy/loss"] == [0.5, "nan", 0.1]
    assert evals["step"] == [0, 2, 3] and evals["eval/accuracy"] == [0.40, 0.5, 0.45]
    rec = seed_result(7, FINISHED, series, evals, _spec(accuracy_threshold=0.5))
    assert rec["collapsed"] and "policy/loss" in rec["collapse_reason"]
    assert rec["initial_accuracy"] == 0.40 and rec["final_accuracy"] == 0.45 and rec["best_accuracy"] == 0.5
    assert rec["steps_to_threshold"] == 2 and rec["skipped_updates"] == 4.0
    assert rec["clip_frac_low_mean"] == pytest.approx(0.2) and rec["clip_frac_high_mean"] == pytest.approx(0.2)
    json.dumps(rec, allow_nan=False)  # strict JSON: NaN is the string "nan"


def test_steps_to_threshold_and_its_median():
    assert first_reach([0, 10, 20], [0.3, 0.5, 0.6], 0.5) == 10
    assert first_reach([0, 10, 20], [0.6, 0.5, 0.6], 0.5) == 0
    assert first_reach([0, 10, 20], [0.3, "nan", 0.4], 0.5) is None
    assert median_steps([10, None, 20]) == 20
    assert median_steps([10, None, None]) is None
    assert median_steps([10, 20, 30, None]) == 25
    assert median_steps([10, None]) is None
    assert median_steps([]) is None


def test_aggregate_over_seeds():
    spec = _spec(accuracy_threshold=0.5)
    per_seed = []
    for seed, (accs, status) in enumerate([([0.4, 0.5, 0.6], FINISHED), ([0.4, 0.45, 0.4], FINISHED),
                                           ([0.4, 0.3, 0.2], FINISHED), ([0.4], FAILED)]):
        steps = [0, 10, 20][:len(accs)]
        series = {"step": [1, 2], "policy/clip_frac_low": [0.1, 0.1], "policy/clip_frac_high": [0.2, 0.2]}
        per_seed.append(seed_result(seed, status, series, {"step": steps, "eval/accuracy": accs}, spec,
                                    wall_time_s=10.0 * (seed + 1), error="boom" if status == FAILED else None))
    agg = aggregate(per_seed)
    assert agg["finished"] == 3 and agg["failed"] == 1
    assert agg["collapsed"] == 2 and agg["collapsed_seeds"] == [2, 3]
    assert agg["final_accuracy_mean"] == pytest.approx(0.4) and agg["final_accuracy_n"] == 3
    assert agg["final_accuracy_std"] == pytest.approx(0.2)
    assert agg["best_accuracy_mean"] == pytest.approx((0.6 + 0.45 + 0.3) / 3)
    assert agg["clip_frac_total_mean"] == pytest.approx(0.3)
    assert agg["steps_to_threshold_median"] is None and agg["threshold_reached"] == 1  # 10, inf, inf, inf
    assert agg["wall_time_s_total"] == pytest.approx(100.0)
    summary = build_summary(spec, {"a": per_seed}, machine={"jobs": 1})
    text = render_report(summary)
    assert "| a | 0.400 | 0.400 ± 0.200 (n=3) |" in text and "2/4" in text and "not reached (1/4 reached)" in text
    assert "### Failed runs" in text and "failed: boom" in text


def test_reuse_summary_keeps_matching_labels_and_refuses_changed_ones():
    from sspo_jax.tools.compare.command import reuse_summarized
    from sspo_jax.tools.compare.summary import MISSING

    cfg = str(ROOT / "configs/tiny_sspo.yaml")
    old_spec = CompareSpec(name="t", runs=(RunSpec("a", cfg),), seeds=(0, 1), accuracy_threshold=0.5)
    series = {"step": [1, 2], "policy/clip_frac_low": [0.1, 0.1], "policy/clip_frac_high": [0.0, 0.0]}
    old = [seed_result(s, FINISHED, series, {"step": [0, 10], "eval/accuracy": [0.4, 0.5 + s / 10]}, old_spec)
           for s in (0, 1)]
    prior = build_summary(old_spec, {"a": old}, machine={"jobs": 1, "git_commit": "abc123" * 7},
                          commands={"a": "sspo-jax train a"})
    prior = json.loads(json.dumps(prior))  # as read back from summary.json

    # a new label b is trained; a has no run directories here and comes from the earlier summary
    spec = CompareSpec(name="t", runs=(RunSpec("a", cfg), RunSpec("b", cfg, ("optim.lr=0.001",))),
                       seeds=(0, 1), accuracy_threshold=0.5)
    fresh = [seed_result(s, FINISHED, series, {"step": [0, 10], "eval/accuracy": [0.4, 0.3]}, spec) for s in (0, 1)]
    missing = [seed_result(s, MISSING, {}, {}, spec) for s in (0, 1)]
    per_label = {"a": missing, "b": fresh}
    reused = reuse_summarized(spec, per_label, prior, ())
    assert list(reused) == ["a"] and reused["a"]["git_commit"].startswith("abc123")
    assert [r["final_accuracy"] for r in per_label["a"]] == [0.5, 0.6] and per_label["b"] is fresh
    summary = build_summary(spec, per_label, machine={"jobs": 1}, commands={"b": "sspo-jax train b"},
                            reused=reused)
    a, b = summary["labels"]
    assert a["aggregate"]["final_accuracy_mean"] == pytest.approx(0.55) and a["command"] == "sspo-jax train a"
    assert a["reused_from"]["git_commit"].startswith("abc123") and "reused_from" not in b
    text = render_report(summary)
    assert "Label a: runs of an earlier summary" in text and "--report-only --reuse-summary" in text
    # reusing the new summary again keeps where the runs came from, not when they were last reused
    again = json.loads(json.dumps(summary))
    again["generated"], again["machine"] = "later", {"git_commit": "fff"}
    per_label = {"a": [seed_result(s, MISSING, {}, {}, spec) for s in (0, 1)], "b": fresh}
    assert reuse_summarized(spec, per_label, again, ())["a"]["git_commit"].startswith("abc123")

    # a label trained differently, or missing a seed, is refused by name
    changed = CompareSpec(name="t", runs=(RunSpec("a", cfg, ("optim.lr=0.001",)),), seeds=(0, 1),
                          accuracy_threshold=0.5)
    with pytest.raises(ConfigError, match=r"label 'a' .* overrides"):
        reuse_summarized(changed, {"a": list(missing)}, prior, ())
    stricter = CompareSpec(name="t", runs=(RunSpec("a", cfg),), seeds=(0, 1), accuracy_threshold=0.6)
    with pytest.raises(ConfigError, match="accuracy_threshold"):
        reuse_summarized(stricter, {"a": list(missing)}, prior, ())
    more_seeds = CompareSpec(name="t", runs=(RunSpec("a", cfg),), seeds=(0, 1, 2), accuracy_threshold=0.5)
    with pytest.raises(ConfigError, match=r"seeds \[2\] are not in it"):
        reuse_summarized(more_seeds, {"a": missing + [seed_result(2, MISSING, {}, {}, spec)]}, prior, ())
    with pytest.raises(ConfigError, match="quick-check overrides"):
        reuse_summarized(spec, {"a": list(missing), "b": fresh}, prior, ("train.steps=2",))
    # a label with runs of its own is never replaced
    per_label = {"a": fresh, "b": fresh}
    assert reuse_summarized(spec, per_label, prior, ()) == {} and per_label["a"] is fresh


# ---- spec validation --------------------------------------------------------------------------------

GOOD = {"name": "x", "seeds": [0, 1], "common": {"train.steps": 2},
        "runs": [{"label": "a", "config": str(ROOT / "configs/tiny_sspo.yaml"), "overrides": {"optim.lr": 1e-3}}]}


def _bad(**changes):
    data = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if key.startswith("run_"):
            data["runs"][0][key[4:]] = value
        else:
            data[key] = value
    return data


def test_a_good_spec_and_its_overrides():
    spec = spec_from_mapping(GOOD, "good.yaml")
    assert spec.common == ("train.steps=2",) and spec.runs[0].overrides == ("optim.lr=0.001",)
    assert spec.accuracy_key == "eval/accuracy" and spec.collapse == CollapseRule()
    assert override_string("data.prompt_template", "{prompt}") == "data.prompt_template={prompt}"
    assert override_string("sampling.prompt_buckets", [32, 64]) == "sampling.prompt_buckets=[32, 64]"
    assert override_string("logging.progress", False) == "logging.progress=false"


@pytest.mark.parametrize("data,message", [
    (_bad(seedz=[0]), r"spec.yaml: unknown key\(s\) \['seedz'\]"),
    (_bad(seeds=[0, 0]), "spec.yaml: seeds repeats a seed"),
    (_bad(seeds=[-1]), "spec.yaml: seeds must hold integers >= 0"),
    (_bad(name="a b"), "spec.yaml: name must be"),
    (_bad(runs=[]), "spec.yaml: runs must be a non-empty list"),
    (_bad(runs=[GOOD["runs"][0], GOOD["runs"][0]]), r"runs\[1\] \(a\): the label 'a' is used twice"),
    (_bad(run_config="configs/nope.yaml"), r"runs\[0\] \(a\).config: 'configs/nope.yaml' does not exist"),
    (_bad(run_label="a/b"), r"runs\[0\].label must be"),
    (_bad(run_extra=1), r"runs\[0\] \(a\): unknown key\(s\) \['extra'\]"),
    (_bad(run_overrides="optim.lr=1"), r"runs\[0\] \(a\).overrides must be a mapping"),
    (_bad(common={"optim": {"lr": 1}}), "spec.yaml: common.optim: set nested values key by key"),
    (_bad(accuracy_threshold=2), "spec.yaml: accuracy_threshold must be a number in"),
    (_bad(collapse={"margn": 0.1}), r"unknown key\(s\) \['collapse.margn'\]"),
    (_bad(collapse={"last_evals": 0}), "spec.yaml: collapse.last_evals must be an integer >= 1"),
])
def test_spec_errors_name_the_file_and_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        spec_from_mapping(data, "spec.yaml")


def test_spec_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nruns: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: YAML syntax error at line"):
        load_spec(bad)


def test_a_bad_train_key_fails_before_training_naming_spec_label_and_key(tmp_path, capsys):
    from sspo_jax.cli import main

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_bad(common={"eval.samplez": 1})))
    assert main(["compare", str(path), "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "spec.yaml: run 'a'" in err and "eval.samplez" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["equal_eps", "paper_defaults", "stress", "sspo_defaults", "sspo_word"])
def test_shipped_specs_load_and_every_run_config_validates(name, monkeypatch):
    from sspo_jax.tools.compare.spec import validate_train_configs

    monkeypatch.chdir(ROOT)
    spec = load_spec(f"configs/compare/{name}.yaml")
    assert spec.seeds == (0, 1, 2, 3, 4)
    for label, cfg in validate_train_configs(spec).items():
        assert cfg.train.steps == 40 and cfg.rows == 128 and cfg.algorithm.num_minibatches == 4, label
        assert (cfg.eval.every, cfg.eval.size, cfg.eval.batch_size, cfg.eval.samples) == (10, 128, 128, 1)
        assert cfg.checkpoint.every == 10 and not cfg.logging.progress
        if name == "equal_eps":
            assert (cfg.algorithm.eps_low, cfg.algorithm.eps_high) == (0.2, 0.28)
        if name == "stress":
            assert cfg.optim.lr == 1e-3
    if name == "sspo_defaults":  # the pre-registered runs: what each label changes, at the rule's lr
        cfgs = validate_train_configs(spec)
        assert {c.optim.lr for c in cfgs.values()} == {2.8e-4} and "outcome 1" in spec.findings  # amendment 1
        guard, noguard = cfgs["sspo_guard"].algorithm, cfgs["sspo_noguard"].algorithm
        assert guard.token_guard and not guard.entropy_scale_low and guard.entropy_norm == "quantile"
        assert not noguard.token_guard and cfgs["sspo_guard_alpha0"].algorithm.entropy_alpha == 0
        assert cfgs["sspo_token"].algorithm.segmentation.granularity == "token"
        assert cfgs["grpo"].algorithm.kl_beta > 0 and cfgs["grpo_kl0"].algorithm.kl_beta == 0
    if name == "sspo_word":  # the replication: sspo_defaults' runs on the worded task of configs/word_sspo.yaml
        from sspo_jax.train.config import load_config

        base, word = load_spec("configs/compare/sspo_defaults.yaml"), load_config("configs/word_sspo.yaml")
        assert [(r.label, r.config, r.overrides) for r in spec.runs] == \
            [(r.label, r.config, r.overrides) for r in base.runs]
        for cfg in validate_train_configs(spec).values():
            assert (cfg.model.path, cfg.data.arithmetic, cfg.sampling.max_new_tokens, cfg.sampling.prompt_buckets) \
                == (word.model.path, word.data.arithmetic, word.sampling.max_new_tokens, word.sampling.prompt_buckets)
            assert cfg.optim.lr == 2.8e-4
    if name == "paper_defaults":
        cfgs = validate_train_configs(spec)
        assert cfgs["sspo_alpha0"].algorithm.entropy_alpha == 0 and cfgs["sspo"].algorithm.entropy_alpha == 1
        assert cfgs["gspo"].algorithm.eps_low == 3e-4 and cfgs["sppo"].data.batch_size == 128


# ---- the runner -------------------------------------------------------------------------------------

class _ScriptTask(runner.RunTask):
    """A task whose subprocess is a short Python script instead of the trainer."""

    script: str = ""

    @property
    def argv(self):
        return [sys.executable, "-c", self.script]


def test_a_failing_run_is_recorded_not_raised_and_reported_as_collapsed(tmp_path):
    spec = _spec(seeds=(0, 1))
    tasks = []
    for seed in (0, 1):
        run_dir = tmp_path / "a" / f"seed{seed}"
        task = _ScriptTask("a", seed, "cfg.yaml", [], run_dir, 1, {})
        records = [{"step": 0, "eval/accuracy": 0.4}, {"step": 1, "eval/accuracy": 0.5, "policy/loss": 0.1}]
        body = f"""
import json, pathlib, sys
d = pathlib.Path({str(run_dir)!r})
d.joinpath('metrics.jsonl').write_text(''.join(json.dumps(r) + '\\n' for r in {records!r}))
"""
        if seed == 0:
            body += "d.joinpath('summary.json').write_text(json.dumps({'steps': 1}))\n"
        else:
            body += ("print('Traceback ...', file=sys.stderr)\n"
                     "print('error: 3 consecutive steps had non-finite', file=sys.stderr)\nsys.exit(2)\n")
        task.script = body
        tasks.append(task)
    lines = []
    results = runner.run_tasks(tasks, jobs=2, echo=lines.append, poll_s=0.05)
    assert results[("a", 0)]["status"] == FINISHED and results[("a", 1)]["status"] == FAILED
    assert results[("a", 1)]["returncode"] == 2 and "non-finite" in results[("a", 1)]["error"]
    assert any("a seed 1: FAILED (exit 2)" in ln for ln in lines) and len(lines) == 2
    # again: the finished run and the failed run are both kept, nothing is started
    lines.clear()
    runner.run_tasks(tasks, jobs=1, echo=lines.append, poll_s=0.05)
    assert lines == ["[1/2] a seed 0: already finished, skipped", "[2/2] a seed 1: already failed, skipped"]
    per_label = collect(spec, tasks, {})
    agg = aggregate(per_label["a"])
    assert agg["failed"] == 1 and agg["collapsed_seeds"] == [1]
    assert per_label["a"][1]["collapse_reason"].startswith("failed: error: 3 consecutive")
    assert "Traceback" in per_label["a"][1]["stderr_tail"]
    assert per_label["a"][0]["wall_time_s"] > 0 and not math.isnan(per_label["a"][0]["final_accuracy"])


def test_an_interrupted_run_is_started_again_and_its_wall_time_adds_up(tmp_path):
    run_dir = tmp_path / "a" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 0, "eval/accuracy": 0.4}\n{"step": 1, "eval/ac')  # torn
    (run_dir / runner.MARKER).write_text(json.dumps({"status": "running", "attempts": [
        {"returncode": -15, "wall_time_s": 5.0, "interrupted": True}]}))
    assert runner.run_status(run_dir, 1) == "incomplete"
    task = _ScriptTask("a", 0, "cfg.yaml", [], run_dir, 1, {})
    task.script = f"""
import json, pathlib
d = pathlib.Path({str(run_dir)!r})
d.joinpath('metrics.jsonl').write_text('{{"step": 0}}\\n{{"step": 1}}\\n')
d.joinpath('summary.json').write_text(json.dumps({{'steps': 1}}))
"""
    lines = []
    rec = runner.run_tasks([task], echo=lines.append, poll_s=0.05)[("a", 0)]
    assert rec["status"] == FINISHED and len(rec["attempts"]) == 2 and rec["wall_time_s"] > 5.0
    assert lines[0].startswith("[1/1] a seed 0: finished in")


def test_a_run_directory_of_another_config_is_refused(tmp_path):
    task = runner.RunTask("a", 0, "cfg.yaml", [], tmp_path, 2, {"optim": {"lr": 1e-3}, "train": {"steps": 2}})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"optim": {"lr": 3e-4}, "train": {"steps": 2},
                                                          "run_dir": "elsewhere", "logging": {"progress": True}}))
    with pytest.raises(ConfigError, match=r"another config \(differs in \['optim.lr'\]\)"):
        runner.check_reusable(task)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"optim": {"lr": 1e-3}, "train": {"steps": 2},
                                                          "run_dir": "elsewhere"}))
    runner.check_reusable(task)


def test_cpu_shares():
    assert runner.cpu_shares(1) == [None]
    shares = runner.cpu_shares(2)
    assert len(shares) == 2 and all(shares)
    env = runner.child_env([0])
    assert env["OMP_NUM_THREADS"] == "1"


NEW_PRESETS = ("gmpo", "cispo", "clip_cov", "kl_cov", "top_entropy")


@pytest.mark.parametrize("common", [{"train.steps": 2, "data.batch_size": 16, "algorithm.num_minibatches": 4},
                                    {"train.steps": 2}])
def test_the_comparison_plans_runs_of_the_newer_presets(tmp_path, common, monkeypatch):
    """gmpo, cispo, clip_cov, kl_cov and top_entropy compare like the others: a spec over their tiny
    configs validates and plans one train command per (label, seed) with the spec's overrides."""
    monkeypatch.chdir(ROOT)
    spec = spec_from_mapping({"name": "newer", "seeds": [0, 1], "common": common,
                              "runs": [{"label": p, "config": f"configs/tiny_{p}.yaml"} for p in NEW_PRESETS]},
                             "newer.yaml")
    tasks = runner.plan(spec, tmp_path / "runs")
    assert [(t.label, t.seed) for t in tasks] == [(p, s) for s in (0, 1) for p in NEW_PRESETS]
    for task in tasks:
        assert task.resolved["algorithm"]["preset"] == task.label and task.steps == 2
        assert "--config" in task.argv and f"configs/tiny_{task.label}.yaml" in task.argv
        assert task.argv[-2:] == ["--set", f"train.seed={task.seed}"]
