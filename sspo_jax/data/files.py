"""JSONL and Parquet prompt sources with configurable field names.

Rows are read and validated when the source is built, so a bad row fails at start-up with its
file and line (JSONL) or row (Parquet) named, not in the middle of training:
malformed JSON, a line that is not UTF-8, a row that is not an object, a missing field, an empty
prompt or answer, a GSM8K answer without ``####``. Whitespace-only lines of a JSONL file are not
records and are skipped. Answer formats: ``raw`` (the field as is), ``gsm8k`` (the text after
the last ``####``, e.g. ``... #### 18`` -> ``18``), ``boxed`` (the last ``\\boxed{}`` content,
e.g. a MATH ``solution`` field).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Literal

from sspo_jax.data.records import DataError, PromptRecord
from sspo_jax.rewards.extract import gold_answer

AnswerFormat = Literal["raw", "gsm8k", "boxed"]
ANSWER_FORMATS = ("raw", "gsm8k", "boxed")


def _field_text(where: str, row: dict[str, Any], field: str, role: str, setting: str) -> str:
    if field not in row or row[field] is None:
        present = sorted(k for k, v in row.items() if v is not None)
        raise DataError(f"{where}: no {role} field {field!r} (fields present: {present}); "
                        f"fix the row or set data.{setting} to the right field name")
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: {role} field {field!r} must be text or a number, got "
                        f"{type(value).__name__}")
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        raise DataError(f"{where}: empty {role} in field {field!r}; remove the row or fill it in")
    return text


def _answer(where: str, text: str, answer_format: str, field: str) -> str:
    parsed = gold_answer(text, answer_format)
    if parsed is None and answer_format == "gsm8k":
        raise DataError(f"{where}: answer field {field!r} has no '####' marker (data.answer_format="
                        "'gsm8k' expects '... #### 18'); use answer_format='raw' for bare answers")
    if parsed is None:
        raise DataError(f"{where}: answer field {field!r} has no \\boxed{{...}} (data.answer_format="
                        "'boxed'); use answer_format='raw' for bare answers")
    text = parsed
    if not text:
        raise DataError(f"{where}: empty answer in field {field!r} after extraction ({answer_format})")
    return text


def _record(where: str, row: Any, path: str, position: dict[str, int], prompt_field: str,
            answer_field: str, answer_format: str, meta_fields: Sequence[str]) -> PromptRecord:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object per row, got {type(row).__name__}")
    prompt = _field_text(where, row, prompt_field, "prompt", "prompt_field")
    answer = _answer(where, _field_text(where, row, answer_field, "answer", "answer_field"),
                     answer_format, answer_field)
    meta: dict[str, Any] = {"source": path, **position}
    for name in meta_fields:
        if name not in row:
            raise DataError(f"{where}: no field {name!r} listed in data.meta_fields")
        meta[name] = row[name]
    return PromptRecord(prompt, answer, meta)


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file; check data.path")


def _check_format(answer_format: str) -> None:
    if answer_format not in ANSWER_FORMATS:
        raise DataError(f"data.answer_format={answer_format!r} is not one of {list(ANSWER_FORMATS)}")


class _ListBacked:
    records: list[PromptRecord]
    name: str

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PromptRecord:
        return self.records[index]


class JsonlSource(_ListBacked):
    """Records from a JSON Lines file (one JSON object per line, UTF-8).

    Args:
      path: the file.
      prompt_field, answer_field: names of the prompt and gold answer fields (MATH style
        ``problem``/``answer``, GSM8K style ``question``/``answer``).
      answer_format: ``raw``, ``gsm8k`` or ``boxed`` (see the module docstring).
      meta_fields: further fields copied into each record's meta.
    Raises:
      DataError naming the file and the 1-based line of the first bad row.
    """

    def __init__(self, path: str | os.PathLike, prompt_field: str = "problem", answer_field: str = "answer",
                 answer_format: str = "raw", meta_fields: Sequence[str] = ()) -> None:
        path = os.fspath(path)
        _check_file(path)
        _check_format(answer_format)
        self.name = path
        self.records = []
        with open(path, "rb") as handle:
            for lineno, raw in enumerate(handle, start=1):
                where = f"{path}:{lineno}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{where}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                                    f"{exc.start + 1}); re-encode the file as UTF-8") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.rstrip("\r\n"))  # columns of this line, not of the next
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
                self.records.append(_record(where, row, path, {"line": lineno}, prompt_field, answer_field,
                                            answer_format, meta_fields))
        if not self.records:
            raise DataError(f"{path}: the file has no records")


class ParquetSource(_ListBacked):
    """Records from a Parquet file (needs pyarrow, in the ``data`` extra).

    Same arguments as `JsonlSource`; errors name the file and the 1-based row.

    Raises:
      DataError: an unreadable file, a missing column or a bad row.
      ImportError: pyarrow is not installed.
    """

    def __init__(self, path: str | os.PathLike, prompt_field: str = "problem", answer_field: str = "answer",
                 answer_format: str = "raw", meta_fields: Sequence[str] = ()) -> None:
        path = os.fspath(path)
        _check_file(path)
        _check_format(answer_format)
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError("Parquet sources need pyarrow: pip install 'sspo-jax[data]'") from exc
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for unreadable files
            raise DataError(f"{path}: cannot read as Parquet ({exc})") from exc
        columns = table.column_names
        for field, setting in ((prompt_field, "prompt_field"), (answer_field, "answer_field"),
                               *((m, "meta_fields") for m in meta_fields)):
            if field not in columns:
                raise DataError(f"{path}: no column {field!r} (columns: {columns}); set data.{setting}")
        self.name = path
        wanted = list(dict.fromkeys([prompt_field, answer_field, *meta_fields]))
        rows = table.select(wanted).to_pylist()
        self.records = [
            _record(f"{path}: row {i + 1}", row, path, {"row": i + 1}, prompt_field, answer_field,
                    answer_format, meta_fields)
            for i, row in enumerate(rows)
        ]
        if not self.records:
            raise DataError(f"{path}: the file has no rows")
