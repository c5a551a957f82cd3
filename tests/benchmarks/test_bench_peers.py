"""The peer benchmark (benchmarks/bench_peers.py): its refusal rules, the per-step and per-phase
aggregation, the summary rows, the peers' copy of the math reward, and the sspo_jax job end to
end at smoke sizes.

The TRL and Tunix jobs need their own venvs (.peers/, built by ``bench_peers.py --setup-only``)
and are run by hand, not here. Timings are never asserted.
"""

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / "benchmarks"
for path in (BENCH_DIR, BENCH_DIR / "peers"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import bench_peers  # noqa: E402
import run as bench_run  # noqa: E402
import job_io  # noqa: E402
from common import model_flops_per_token, rows_model_flops  # noqa: E402


def _records(step_s, rewards, responses=256):
    return [{"step": i + 1, "step_s": s, "generate_and_reward_s": 0.2 * s, "extra_forward_s": 0.1 * s,
             "update_s": 0.7 * s, "reward_mean": r, "responses": responses}
            for i, (s, r) in enumerate(zip(step_s, rewards))]


def test_summary_takes_medians_after_the_skipped_steps():
    recs = _records([30.0, 9.0, 2.0, 4.0, 3.0], [0.0, 0.1, 0.3, 0.5, 0.4])
    s = bench_peers.summarize_records(list(reversed(recs)), skip_steps=2)
    assert s["measured_steps"] == [3, 4, 5]
    assert s["step"] == {"median_s": 3.0, "min_s": 2.0, "max_s": 4.0}
    assert s["update"]["median_s"] == pytest.approx(2.1)
    assert s["generate_and_reward"]["max_s"] == pytest.approx(0.8)
    assert s["extra_forward"]["min_s"] == pytest.approx(0.2)
    assert s["reward_curve"] == [0.0, 0.1, 0.3, 0.5, 0.4]  # every step, in order
    assert s["reward_mean"] == pytest.approx(0.4)
    assert s["reward_se"] == pytest.approx(0.1 / math.sqrt(3))
    assert s["responses_measured"] == 3 * 256
    with pytest.raises(ValueError, match="no step"):
        bench_peers.summarize_records(recs, skip_steps=5)


TINY_ARITH = json.loads((REPO / "sspo_jax" / "assets" / "tiny-arith" / "config.json").read_text())


def test_rows_model_flops_counts_each_row_at_its_own_length():
    # one row of n tokens: n times the per-token count at sequence length n
    for n in (1, 17, 80):
        assert rows_model_flops(TINY_ARITH, [n]) == pytest.approx(n * model_flops_per_token(TINY_ARITH, n)["total"])
    # rows add up, and padding is not work: [40, 40] costs less attention than [80]
    assert rows_model_flops(TINY_ARITH, [40, 17]) == pytest.approx(
        rows_model_flops(TINY_ARITH, [40]) + rows_model_flops(TINY_ARITH, [17]))
    assert rows_model_flops(TINY_ARITH, [40, 40]) < rows_model_flops(TINY_ARITH, [80])
    # tiny-arith: q 96x96, k/v 96x48, o 96x96, MLP 3 x 96x256 per layer, 3 layers, tied head 287x96
    assert model_flops_per_token(TINY_ARITH, 0)["matmul_params"] == 3 * (96 * 288 + 3 * 96 * 256) + 287 * 96


def test_update_utilisation_is_model_flops_per_second_over_the_peak():
    recs = _records([1.0, 1.0, 1.0], [0.3, 0.3, 0.3])
    for r, flops in zip(recs, (9e9, 7e9, 8e9)):  # update_s = 0.7 s each
        r.update(update_model_flops=flops, update_valid_tokens=750, update_computed_tokens=1000)
    s = bench_peers.summarize_records(recs, skip_steps=0)
    assert s["update_work"]["model_flops_per_s_median"] == pytest.approx(8e9 / 0.7)
    util = bench_peers.update_utilisation(s, {"flops_per_s_median": 2e10})
    assert util["fraction_of_peak"] == pytest.approx(8e9 / 0.7 / 2e10)
    assert util["padding_computed_frac"] == pytest.approx(0.25)
    assert util["met"] is False and util["target"] == ">= 60 %"
    assert bench_peers.update_utilisation(s, {"flops_per_s_median": 1.5e10})["met"] is True
    assert bench_peers.update_utilisation(s, None) is None  # a peer job: no peak, no figure
    assert "update_work" not in bench_peers.summarize_records(_records([1.0], [0.3]), skip_steps=0)


def test_one_measured_step_uses_the_binomial_standard_error():
    assert bench_peers.reward_standard_error([0.25], 64) == pytest.approx(math.sqrt(0.25 * 0.75 / 64))
    assert bench_peers.reward_standard_error([0.25]) == math.inf


def test_loaded_machine_refuses_every_ratio():
    assert bench_peers.load_refusal(0.3, 1.0) is None
    reason = bench_peers.load_refusal(2.5, 1.0)
    assert "load average 2.50 > --max-load 1.00" in reason
    base = bench_peers.summarize_records(_records([2.0, 2.0, 2.0, 2.0], [0.4, 0.4, 0.41, 0.39]), 1)
    peer = bench_peers.summarize_records(_records([1.0, 1.0, 1.0, 1.0], [0.4, 0.4, 0.41, 0.39]), 1)
    assert bench_peers.compare(base, peer, "trl", target=1.2, refused=reason) == {"ratios_refused": reason}


def test_rewards_that_disagree_beyond_noise_refuse_the_ratio():
    a = {"reward_mean": 0.40, "reward_se": 0.01}
    assert bench_peers.reward_refusal(a, {"reward_mean": 0.43, "reward_se": 0.01}) is None  # 2.1 se apart
    reason = bench_peers.reward_refusal({"reward_mean": 0.50, "reward_se": 0.01}, a, names=("tunix", "sspo_jax"))
    assert reason.startswith("mean rewards disagree beyond noise: tunix 0.500")
    assert bench_peers.reward_refusal(a, {"reward_mean": 0.45, "reward_se": 0.01}, z=4.0) is None
    assert bench_peers.reward_refusal(a, {"reward_mean": float("nan"), "reward_se": 0.01}) is not None


def test_agreeing_rewards_give_the_ratio_with_its_target():
    base = bench_peers.summarize_records(_records([9.0, 2.0, 2.5, 3.0], [0.3, 0.4, 0.42, 0.38]), 1)
    peer = bench_peers.summarize_records(_records([5.0, 1.0, 1.2, 1.1], [0.35, 0.41, 0.39, 0.4]), 1)
    r = bench_peers.compare(base, peer, "trl", target=1.2, refused=None)
    assert r["ratio"] == pytest.approx(1.1 / 2.5)
    assert (r["min"], r["max"]) == (pytest.approx(1.0 / 3.0), pytest.approx(1.2 / 2.0))
    assert r["target"] == ">= 1.2" and r["met"] is False
    assert r["per_phase"]["update"] == pytest.approx(1.1 / 2.5)
    faster = bench_peers.compare(peer, base, "tunix", target=1.5, refused=None)
    assert faster["met"] is True
    assert "target" not in bench_peers.compare(base, peer, "trl", target=None, refused=None)


def test_summary_rows_show_step_times_ratios_and_refusals():
    import run as bench_run

    base = bench_peers.summarize_records(_records([9.0, 2.0, 2.5], [0.3, 0.4, 0.42]), 1)
    peer = bench_peers.summarize_records(_records([5.0, 1.0, 1.2], [0.35, 0.41, 0.39]), 1)
    spec = {"batch_size": 32, "group_size": 8, "max_new_tokens": 48}
    ratios = {"trl_step / sspo_jax_step": bench_peers.compare(base, peer, "trl", target=1.2, refused=None),
              "tunix_step / sspo_jax_step": {"ratios_refused": "machine loaded at the start"}}
    data = {"presets": {"grpo": {"spec": spec, "frameworks": {"sspo_jax": base, "trl": peer, "tunix": peer},
                                 "ratios": ratios}}}
    figs = bench_run.figures_peers(data)
    names = [f["name"] for f in figs]
    assert names[:3] == [f"RL step time, {n} (grpo preset, 32x8 rows, 48 new, tiny model)"
                         for n in ("sspo_jax", "trl", "tunix")]
    assert figs[0]["value"] == base["step"]["median_s"] and figs[0]["unit"] == "s"
    assert "ratio refused: machine loaded" in figs[2]["note"]
    (ratio,) = [f for f in figs if f["unit"] == "x"]
    assert ratio["name"].startswith("trl_step / sspo_jax_step") and ratio["met"] is False


def test_job_io_phase_clock_and_prompt_order():
    clock = job_io.PhaseClock()
    clock.add("gen", 1.0)
    clock.add("gen", 0.5)
    clock.add_rewards([1.0, 0.0, 0.0, 1.0], [10, 20, 30, 40])
    rec = clock.end_step(1, 3.0, 1.0, 0.5, 1.5)
    assert rec["reward_mean"] == 0.5 and rec["responses"] == 4 and rec["response_length_mean"] == 25
    assert rec["detail/gen"] == 1.5
    assert clock.end_step(2, 1.0, 0.0, 0.0, 1.0)["responses"] == 0  # the next step starts empty
    rows = [{"step": 1, "prompt": "a"}, {"step": 1, "prompt": "b"}, {"step": 2, "prompt": "c"}]
    job_io.check_prompt_order(rows, [["a", "b"], ["c"]])
    with pytest.raises(SystemExit, match="step 2"):
        job_io.check_prompt_order(rows, [["a", "b"], ["d"]])


def test_peer_venv_is_reused_while_its_pins_are_unchanged(tmp_path, monkeypatch):
    py = bench_peers.venv_python("trl", tmp_path)
    py.parent.mkdir(parents=True)
    py.touch()
    (tmp_path / "trl" / bench_peers.STAMP).write_text(bench_peers.stamp_text("trl"))
    calls = []
    monkeypatch.setattr(bench_peers.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    assert bench_peers.ensure_venv("trl", tmp_path, echo=lambda s: None) == py
    assert calls == []
    (tmp_path / "trl" / bench_peers.STAMP).write_text("old pins")
    bench_peers.ensure_venv("trl", tmp_path, echo=lambda s: None)
    assert [c[3:] for c in calls] == [["install", "--quiet", *stage] for stage in bench_peers.PEER_REQUIREMENTS["trl"]]
    assert (tmp_path / "trl" / bench_peers.STAMP).read_text() == bench_peers.stamp_text("trl")


def test_peers_answer_check_agrees_with_the_math_reward():
    pytest.importorskip("math_verify")
    from answer_check import scores

    from sspo_jax.rewards.math_answer import math_reward

    responses = ["5+3=8. 8*12=96. 96*1=96. The answer is \\boxed{96}.", "\\boxed{95}", "no box: 96",
                 "\\boxed{96.0}", "first \\boxed{1} then \\boxed{9}", "\\boxed{-4}", "\\boxed{}",
                 "\\boxed{\\frac{18}{2}}",
                 "\\boxed 9", "\\boxed{9", "\\boxed{x}", "\\fbox{0}"]
    golds = ["96", "96", "96", "96", "9", "-4", "3", "9", "9", "9", "9", "0"]
    want = math_reward(responses, golds, workers=0, timeout_s=5).scores.tolist()
    assert scores(responses, golds) == want
    assert sum(want) >= 6


@pytest.mark.slow  # the sspo_jax job in a subprocess, 2 steps at 4 x 4 rows: ~25 s on 2 quiet cores
def test_sspo_jax_job_smoke_writes_records_and_peers_json(tmp_path):
    payload = bench_peers.main(["--smoke", "--frameworks", "sspo_jax", "--steps", "2", "--skip-steps", "1",
                                "--max-load", "1e9", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "peers.json").read_text())
    assert Path(payload["path"]) == tmp_path / "peers.json"
    assert {"machine", "load_avg_at_start", "max_load", "matched", "unmatched", "presets"} <= set(data)
    assert data["load_ok"] is True and "ratios_refused" not in data
    entry = data["presets"]["grpo"]
    assert entry["spec"]["batch_size"] == 4 and entry["spec"]["group_size"] == 4
    s = entry["frameworks"]["sspo_jax"]
    assert s["measured_steps"] == [2] and len(s["reward_curve"]) == 2
    assert s["prompts_match_shared_file"] is True
    assert s["step"]["median_s"] > 0 and 0.0 <= s["reward_mean"] <= 1.0
    records = json.loads((tmp_path / "peers" / "sspo_jax_grpo.json").read_text())["records"]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        parts = r["generate_and_reward_s"] + r["extra_forward_s"] + r["update_s"]
        assert r["step_s"] == pytest.approx(parts, rel=1e-6)
        # 16 rows of at most trimmed width; each valid token costs at least the 6N dense FLOPs
        assert 0 < r["update_valid_tokens"] <= r["update_computed_tokens"] == 16 * r["update_width"]
        assert r["update_model_flops"] >= 6 * 300_000 * r["update_valid_tokens"]
    util = s["update_utilisation"]
    assert 0 < util["fraction_of_peak"] < 1 and util["target"] == ">= 60 %"
    assert 0 <= util["padding_computed_frac"] < 1 and util["matmul_peak_flops_per_s"] > 1e9
    summary = bench_run.summarize(tmp_path)
    assert any(f["name"].startswith("update model FLOP/s over valid tokens") for f in summary["figures"])
    prompts = [json.loads(x) for x in (tmp_path / "peers" / "prompts_grpo.jsonl").read_text().splitlines()]
    assert [p["step"] for p in prompts] == [1] * 4 + [2] * 4 and all(p["gold"] for p in prompts)
