"""sspo_jax: Subsentence-level Policy Optimization and RLVR baselines in JAX/Flax.

Subpackages (imported on first use, so `import sspo_jax` stays cheap):

- ``sspo_jax.algorithms``: pure, model-free loss math (SSPO, GRPO, DAPO, Dr. GRPO, GSPO, PPO, SPPO).
- ``sspo_jax.models``: Flax NNX Qwen2 with Hugging Face checkpoint I/O and chunked token statistics.
- ``sspo_jax.rollout``: jitted batched generation with a KV cache.
- ``sspo_jax.rewards`` / ``sspo_jax.data``: verifiable rewards and prompt sources.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("algorithms", "models", "rollout", "rewards", "data", "train", "parallel")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'sspo_jax' has no attribute {name!r}")


__all__ = ["__version__", *_SUBMODULES]
