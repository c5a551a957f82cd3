"""Smoke test of benchmarks/bench_mesh.py: it runs end to end at toy sizes on the simulated CPU
devices of tests/conftest.py and writes well-formed JSON (timings are not asserted)."""

import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))


def test_bench_mesh_smoke_writes_wellformed_json(tmp_path):
    import bench_mesh

    payload = bench_mesh.main(["--smoke", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "mesh.json").read_text())
    assert Path(payload["path"]) == tmp_path / "mesh.json"
    assert {"machine", "results", "skipped", "informational", "args", "model_config"} <= set(data)
    assert data["informational"] is True and data["backend"] == "cpu" and data["device_count"] == 8
    assert [r["mesh"] for r in data["results"]] == ["2x2x2", "1 device"]
    for row in data["results"]:
        assert row["rows"] == 8 and row["generated_tokens"] == 8 * 4
        for phase in ("generate", "stats", "update"):
            assert row[phase]["median_s"] > 0 and row[phase]["repeats"] == 1 and row["first_call_s"][phase] > 0
        assert row["step"]["median_s"] > 0
    assert data["skipped"] == []
