"""JSONL and Parquet sources: field names, answer formats, and every bad-input error."""

from __future__ import annotations

import json
import re

import pytest

from sspo_jax.data import DataConfig, DataError, JsonlSource, ParquetSource, build_source


def write_lines(path, lines: list[str | bytes]) -> str:
    with open(path, "wb") as f:
        for line in lines:
            f.write((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n")
    return str(path)


def test_math_style_jsonl(tmp_path):
    path = write_lines(tmp_path / "math.jsonl", [
        json.dumps({"problem": "What is $1+1$?", "answer": "2", "level": 1}),
        "",
        json.dumps({"problem": "Simplify $\\frac{2}{4}$.", "answer": "\\frac{1}{2}", "level": 2}),
    ])
    src = JsonlSource(path, meta_fields=("level",))
    assert len(src) == 2
    assert src[1].prompt == "Simplify $\\frac{2}{4}$." and src[1].answer == "\\frac{1}{2}"
    assert src[1].meta == {"source": path, "line": 3, "level": 2}


def test_gsm8k_style_jsonl(tmp_path):
    path = write_lines(tmp_path / "gsm8k.jsonl", [
        json.dumps({"question": "Janet has 16 eggs...", "answer": "16 - 3 - 4 = 9\n9 * 2 = 18\n#### 18"}),
        json.dumps({"question": "How many?", "answer": 7}),
    ])
    cfg = DataConfig(source="jsonl", path=path, prompt_field="question", answer_format="gsm8k")
    with pytest.raises(DataError, match=rf"{path}:2: .*no '####'"):
        build_source(cfg)
    src = build_source(cfg.replace(answer_format="raw"))
    assert src[1].answer == "7"
    path = write_lines(tmp_path / "gsm8k2.jsonl", [
        json.dumps({"question": "Janet has 16 eggs...", "answer": "9 * 2 = 18\n#### 1,018"})])
    assert build_source(cfg.replace(path=path))[0].answer == "1,018"


def test_boxed_answer_format(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", [json.dumps({"problem": "p", "solution": "so $\\boxed{\\frac{1}{2}}$"})])
    assert JsonlSource(path, answer_field="solution", answer_format="boxed")[0].answer == "\\frac{1}{2}"


@pytest.mark.parametrize(
    "lines, pattern",
    [
        ([b'{"problem": "ok", "answer": "1"}', b'{"problem": "caf\xe9", "answer": "2"}'],
         r":2: not valid UTF-8 \(byte 0xe9 at column 17\)"),
        (['{"problem": "ok", "answer": "1"}', '{"problem": "x", "answer": '], r":2: malformed JSON"),
        (['{"problem": "ok", "answer": "1"}', '{"question": "x", "answer": "1"}'],
         r":2: no prompt field 'problem' \(fields present: \['answer', 'question'\]\).*data\.prompt_field"),
        (['{"problem": "x"}'], r":1: no answer field 'answer'"),
        (['{"problem": "x", "answer": null}'], r":1: no answer field 'answer'"),
        (['{"problem": "   ", "answer": "1"}'], r":1: empty prompt"),
        (['{"problem": "x", "answer": ""}'], r":1: empty answer"),
        (['{"problem": "x", "answer": ["1"]}'], r":1: answer field 'answer' must be text"),
        (['["problem", "answer"]'], r":1: expected a JSON object"),
        (['', '  '], r": the file has no records"),
    ],
)
def test_bad_jsonl_rows_name_file_and_line(tmp_path, lines, pattern):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError, match=re.escape(path) + pattern):
        JsonlSource(path)


def test_missing_file_is_named(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        JsonlSource(missing)
    with pytest.raises(DataError, match="data.path"):
        DataConfig(source="jsonl")


def test_parquet_source_and_errors(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = str(tmp_path / "gsm8k.parquet")
    pq.write_table(pa.table({"question": ["a?", "b?"], "answer": ["x\n#### 3", "y\n#### 4"]}), path)
    src = ParquetSource(path, prompt_field="question", answer_format="gsm8k")
    assert [src[i].answer for i in range(2)] == ["3", "4"] and src[1].meta["row"] == 2
    with pytest.raises(DataError, match=r"no column 'problem' \(columns: \['question', 'answer'\]\)"):
        ParquetSource(path)
    bad = str(tmp_path / "bad.parquet")
    pq.write_table(pa.table({"problem": ["a", None, "c"], "answer": ["1", "2", ""]}), bad)
    with pytest.raises(DataError, match=r"bad\.parquet: row 2: no prompt field 'problem'"):
        ParquetSource(bad)
    not_parquet = write_lines(tmp_path / "x.parquet", ["hello"])
    with pytest.raises(DataError, match="cannot read as Parquet"):
        ParquetSource(not_parquet)
