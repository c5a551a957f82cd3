"""The tiny training job that the mesh and multi-process tests run (and compare)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from sspo_jax.parallel import MeshConfig
from sspo_jax.rewards import RewardConfig
from sspo_jax.train.config import TrainConfig
from tests.train.train_fixtures import digit_share  # noqa: F401 - registers the dense test reward
from tests.train.train_fixtures import fast_config


def mesh_run_config(model_dir: Path, run_dir: Path, steps: int, mesh: Optional[MeshConfig] = MeshConfig(2, 2, 2),
                    *extra: str) -> TrainConfig:
    """2 prompts x G responses, 8 new tokens, the dense digit-share reward, on `mesh` (None: one device)."""
    cfg = fast_config(model_dir, "sspo", run_dir, *extra, steps=steps)
    return cfg.replace(rewards=RewardConfig(weights={"test_digit_share": 1.0}, workers=0), mesh=mesh)
