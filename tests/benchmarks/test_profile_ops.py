"""benchmarks/profile_ops.py: the HLO index reads real compiled HLO, and a traced tiny `generate`
yields an op table whose times add up and whose decode-loop matmuls are found and labelled."""

import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

pytest.importorskip("torch")  # bench_rollout, which profile_ops takes its configs from, imports it
pytest.importorskip("transformers")

import profile_ops  # noqa: E402


def test_hlo_index_reads_shape_opcode_source_and_kind():
    text = ('  %ynn_fusion.3 = f32[8,4096]{1,0} fusion(%a, %b), kind=kCustom, calls=%fc.3, '
            'metadata={op_name="jit(_generate)/while/body/bh,vh->bv/dot_general" stack_frame_id=1}, '
            'backend_config={"fusion_config":{"kind":"__ynn_fusion"}}\n'
            '  ROOT %add.1 = f32[8]{0} add(%x, %y), metadata={op_name="jit(f)/add"}\n')
    index = profile_ops.hlo_index(text)
    dot, add = index["ynn_fusion.3"], index["add.1"]
    assert dot["shape"] == "f32[8,4096]{1,0}" and dot["kind"] == "__ynn_fusion"
    assert dot["op_name"].endswith("bh,vh->bv/dot_general")
    assert profile_ops.category(dot) == "matmul" and profile_ops.where(dot) == "loop"
    assert add["opcode"] == "add" and profile_ops.category(add) == "other" and profile_ops.where(add) == "outside"


@pytest.mark.slow  # a compile, untraced calls and one traced call: ~25 s on 2 cores
def test_generate_profile_of_the_tiny_model(tmp_path):
    payload = profile_ops.main(["generate", "--config", "tiny", "--batch", "2", "--new-tokens", "4",
                                "--prompt-len", "8", "--repeats", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "profile_generate_tiny_b2.json").read_text())
    assert saved["top_ops"] == payload["top_ops"] and saved["machine"]["cpu_count"] >= 1
    assert payload["distinct_ops"] >= len(payload["top_ops"]) > 0
    assert sum(payload["category_share"].values()) == pytest.approx(1.0)
    assert sum(payload["where_share"].values()) == pytest.approx(1.0)
    assert sum(r["share"] for r in payload["top_ops"]) <= 1.0 + 1e-9
    # the LM head of every decoding step: a matmul inside the loop, run once per step
    heads = [r for r in payload["top_ops"] if r["op_name"].endswith("bh,vh->bv/dot_general")]
    assert heads and heads[0]["category"] == "matmul" and heads[0]["where"] == "loop"
    assert heads[0]["calls"] == 4 and heads[0]["shape"].startswith("f32[2,256]")


def test_update_profile_of_the_tiny_job(tmp_path):
    """`update` profiles the trainer's own update on a real batch of the shipped tiny job: the op
    table covers forward and backward matmuls, and the groups' shares add up to one."""
    repo = BENCH_DIR.parent
    payload = profile_ops.main(["update", "--job-config", str(repo / "configs" / "tiny_grpo.yaml"),
                                "--set", "data.batch_size=2", "--set", "sampling.max_new_tokens=8",
                                "--set", "rewards.workers=0", "--set", "train.micro_batch_size=8", "--steps", "1", "--repeats", "1",
                                "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "profile_update_tiny_grpo_b16.json").read_text())
    assert saved["batch"] == 16 and 0 < saved["tokens_per_call"] <= 16 * 80
    assert sum(payload["group_share"].values()) == pytest.approx(1.0)
    assert {"matmul/forward/dot_general", "matmul/backward/dot_general"} <= set(payload["group_share"])
    assert payload["where_share"].get("loop", 0) > 0.5  # the micro-batch scan holds the work


def test_update_profile_refuses_a_missing_job_config(tmp_path):
    with pytest.raises(SystemExit):
        profile_ops.main(["update", "--job-config", str(tmp_path / "nope.yaml")])
