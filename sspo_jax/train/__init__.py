"""Training: typed configuration, the jitted update, the RL loop, Orbax checkpoints, metrics.

    from sspo_jax.train import load_config, train
    summary = train(load_config("configs/tiny_sspo.yaml", ["train.steps=20"]))
"""

from sspo_jax.train.config import (CheckpointConfig, EvalConfig, LoggingConfig, LoopConfig, ModelConfig,
                                   OptimConfig, TrainConfig, config_from_mapping, config_to_mapping, load_config,
                                   resolve_model_path)
from sspo_jax.train.state import RolloutBatch, TrainState
from sspo_jax.train.trainer import Trainer, TrainingError, train

__all__ = [
    "CheckpointConfig", "EvalConfig", "LoggingConfig", "LoopConfig", "ModelConfig", "OptimConfig", "RolloutBatch",
    "TrainConfig", "TrainState", "Trainer", "TrainingError", "config_from_mapping", "config_to_mapping",
    "load_config", "resolve_model_path", "train",
]
