"""Training: typed configuration, the jitted update, the RL loop, Orbax checkpoints, metrics.

    from sspo_jax.train import load_config, train
    summary = train(load_config("configs/tiny_sspo.yaml", ["train.steps=20"]))
    run = load_run("runs/default")        # one checkpoint's params, config and tokenizer (no optimizer)
"""

from sspo_jax.train.config import (CheckpointConfig, EvalConfig, LoggingConfig, LoopConfig, ModelConfig,
                                   OptimConfig, TrainConfig, config_from_mapping, config_to_mapping, load_config,
                                   resolve_model_path)
from sspo_jax.train.state import RolloutBatch, TrainState
from sspo_jax.errors import TrainingError
from sspo_jax.train.load_run import LoadedRun, load_run
from sspo_jax.train.trainer import Trainer, train, trainer_for_run

__all__ = [
    "CheckpointConfig", "EvalConfig", "LoadedRun", "LoggingConfig", "LoopConfig", "ModelConfig", "OptimConfig",
    "RolloutBatch", "TrainConfig", "TrainState", "Trainer", "TrainingError", "config_from_mapping",
    "config_to_mapping", "load_config", "load_run", "resolve_model_path", "train", "trainer_for_run",
]
