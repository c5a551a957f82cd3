"""Stop tokens of a checkpoint directory from generation_config.json and config.json."""

from __future__ import annotations

import json

import pytest

from sspo_jax.models import ModelError, read_stop_tokens


def _write(path, name, value):
    (path / name).write_text(value if isinstance(value, str) else json.dumps(value))


def test_union_in_order_ints_and_lists(tmp_path):
    _write(tmp_path, "generation_config.json", {"eos_token_id": [128009, 128001], "top_p": 0.9})
    _write(tmp_path, "config.json", {"model_type": "llama", "eos_token_id": 128001})
    assert read_stop_tokens(tmp_path) == (128009, 128001)
    _write(tmp_path, "config.json", {"model_type": "llama", "eos_token_id": [2, 128009]})
    assert read_stop_tokens(tmp_path) == (128009, 128001, 2)


def test_absent_files_and_keys_give_nothing(tmp_path):
    assert read_stop_tokens(tmp_path) == ()
    _write(tmp_path, "config.json", {"model_type": "qwen2", "eos_token_id": None})
    assert read_stop_tokens(tmp_path) == ()
    _write(tmp_path, "generation_config.json", {"eos_token_id": 151645})
    assert read_stop_tokens(tmp_path) == (151645,)


@pytest.mark.parametrize("name,content,message", [
    ("generation_config.json", "{not json", r"cannot read .*generation_config\.json"),
    ("config.json", [1, 2], r"config\.json: expected a JSON object, got list"),
    ("config.json", {"eos_token_id": "2"}, r"config\.json: 'eos_token_id' must be .* got '2'"),
    ("generation_config.json", {"eos_token_id": [1, -3]}, r"got \[1, -3\]"),
    ("generation_config.json", {"eos_token_id": True}, r"'eos_token_id' must be"),
    ("config.json", {"eos_token_id": [1.5]}, r"'eos_token_id' must be"),
])
def test_malformed_files_are_one_line_errors(tmp_path, name, content, message):
    _write(tmp_path, name, content)
    with pytest.raises(ModelError, match=message) as info:
        read_stop_tokens(tmp_path)
    assert "\n" not in str(info.value)
