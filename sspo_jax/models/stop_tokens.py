"""Stop tokens of a HF checkpoint directory: the `eos_token_id`s its JSON files declare.

Chat models often stop on more than the tokenizer's EOS: Llama 3 lists `<|eot_id|>` and
`<|end_of_text|>` in `generation_config.json`, Qwen lists `<|im_end|>` and `<|endoftext|>`.
`read_stop_tokens` collects them from `generation_config.json` and `config.json` so that the
sampler can stop on every one of them.
"""

from __future__ import annotations

import json
import os

from sspo_jax.errors import ModelError

STOP_TOKEN_FILES = ("generation_config.json", "config.json")


def _eos_ids(file: str) -> list[int]:
    """The `eos_token_id` entries of one JSON file ([] when the file or the key is absent)."""
    try:
        with open(file, encoding="utf-8") as fh:
            d = json.load(fh)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ModelError(f"cannot read {file}: {e}") from e
    if not isinstance(d, dict):
        raise ModelError(f"cannot read {file}: expected a JSON object, got {type(d).__name__}")
    value = d.get("eos_token_id")
    if value is None:
        return []
    ids = value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ModelError(f"{file}: 'eos_token_id' must be a non-negative int or a list of them, "
                         f"got {value!r}")
    return ids


def read_stop_tokens(path: str | os.PathLike) -> tuple[int, ...]:
    """Stop token ids of the checkpoint directory `path`, a tuple of ints [N] (N >= 0).

    Reads `eos_token_id` (an int or a list of ints) from `generation_config.json`, then from
    `config.json`; returns the ids in that order, each once. A file or key that is absent
    contributes nothing (so a directory without either file gives ``()``).

    Raises:
      ModelError: one line naming the file, when it is not JSON, not an object, or its
        `eos_token_id` is neither a non-negative int nor a list of them.
    """
    out: list[int] = []
    for name in STOP_TOKEN_FILES:
        for i in _eos_ids(os.path.join(os.fspath(path), name)):
            if i not in out:
                out.append(i)
    return tuple(out)
