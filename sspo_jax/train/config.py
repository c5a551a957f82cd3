"""`TrainConfig`: the whole training job as one frozen, validated dataclass tree.

YAML layout (every section optional; see configs/ for complete files)::

    model:      {path, dtype, compute_dtype, remat, logprob_chunk_size, critic_path}
    algorithm:  {preset: sspo, <any AlgorithmConfig field>: value}
    sampling:   SamplingConfig fields (max_new_tokens, temperature, top_p, top_k, ...)
    data:       DataConfig fields (source, path, batch_size, ...); group_size defaults to the
                algorithm's group_size
    rewards:    RewardConfig fields (weights, workers, timeout_s, ...)
    optim:      {lr, schedule, warmup_steps, weight_decay, max_grad_norm, critic_lr, ...}
    train:      {steps, seed, micro_batch_size, max_consecutive_skips, exact_on_policy_ratio, trim_multiple}
    eval:       {every, size, batch_size, reward, path, samples}
    checkpoint: {every, keep}
    logging:    {tensorboard, progress}
    mesh:       {data, fsdp, tensor}   (omit for one device; one size may be -1)
    distributed: {enabled, coordinator_address, num_processes, process_id, local_device_ids}
                (multi-host jobs; or the SSPO_* environment variables, see sspo_jax.parallel.distributed)
    run_dir:    runs/NAME

`load_config(path, overrides)` reads a file, applies ``key.sub=value`` overrides and validates.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from sspo_jax.algorithms import presets
from sspo_jax.algorithms.config import AlgorithmConfig, ConfigError
from sspo_jax.data import DataConfig
from sspo_jax.parallel.distributed import DistributedConfig
from sspo_jax.parallel.mesh import MeshConfig
from sspo_jax.rewards import RewardConfig
from sspo_jax.rollout import SamplingConfig
from sspo_jax.train import config_io

from sspo_jax.train.sections import (ASSETS_DIR, BUILTIN_PREFIX, CheckpointConfig, EvalConfig,  # noqa: F401
                                     LoggingConfig, LoopConfig, ModelConfig, OptimConfig, resolve_model_path)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The whole job. See the module docstring for the YAML layout.

    Attributes:
      model: the policy (and critic) checkpoints and numerics.
      algorithm: the policy-optimization algorithm: a preset plus field overrides.
      sampling: how rollout responses are sampled.
      data: the prompt pipeline.
      rewards: reward functions, their weights and the verifier pool.
      optim: the optimizer and learning-rate schedule.
      train: the outer RL loop.
      eval: held-out evaluation.
      checkpoint: Orbax checkpoints.
      logging: metric sinks.
      mesh: sizes of the device mesh axes (data, fsdp, tensor) for sharded training; None = one device
        (in a multi-process job: data parallel over all devices).
      distributed: how the processes of a multi-host job find each other (read by ``sspo-jax train``
        before JAX starts; every field may come from an SSPO_* environment variable instead).
      run_dir: directory of the run's metrics, checkpoints, config and summary (resumed when it
        holds checkpoints).
    """

    model: ModelConfig = ModelConfig()
    algorithm: AlgorithmConfig = dataclasses.field(default_factory=lambda: presets.get("sspo"))
    sampling: SamplingConfig = SamplingConfig()
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(group_size=presets.get("sspo").group_size))
    rewards: RewardConfig = RewardConfig()
    optim: OptimConfig = OptimConfig()
    train: LoopConfig = LoopConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    mesh: Optional[MeshConfig] = None
    distributed: DistributedConfig = DistributedConfig()
    run_dir: str = "runs/default"

    def __post_init__(self) -> None:
        alg, data = self.algorithm, self.data
        if data.group_size != alg.group_size:
            raise ConfigError(
                f"data.group_size={data.group_size} differs from algorithm.group_size={alg.group_size}: "
                "set one of them (data.group_size defaults to the algorithm's)")
        rows = data.batch_size * data.group_size
        if rows % alg.num_minibatches:
            raise ConfigError(f"algorithm.num_minibatches={alg.num_minibatches} must divide the rollout rows "
                              f"data.batch_size * group_size = {rows}")
        mb_rows = rows // alg.num_minibatches
        micro = self.train.micro_batch_size
        if micro is not None and micro < mb_rows and mb_rows % micro:
            raise ConfigError(f"train.micro_batch_size={micro} must divide the minibatch of {mb_rows} rows "
                              f"(rows {rows} / num_minibatches {alg.num_minibatches})")
        if alg.dynamic_sampling and alg.group_size < 2:
            raise ConfigError("algorithm.dynamic_sampling needs group_size >= 2")
        if alg.critic_warmup_steps and alg.critic_warmup_steps >= self.train.steps:
            raise ConfigError(f"algorithm.critic_warmup_steps={alg.critic_warmup_steps} must be below "
                              f"train.steps={self.train.steps}: the policy would never be updated")
        if self.eval.reward not in dict(self.rewards.weights) and self.eval.reward not in ("math", "exact_match"):
            raise ConfigError(f"eval.reward={self.eval.reward!r} must be a correctness reward: 'math', 'exact_match' "
                              f"or one named in rewards.weights {list(dict(self.rewards.weights))}")
        if not self.run_dir:
            raise ConfigError("run_dir is empty")
        s = self.sampling
        if s.top_k or s.top_p < 1 or s.temperature == 0:
            raise ConfigError(
                "training samples from the full softmax(logits / temperature): set sampling.top_k=0, "
                "sampling.top_p=1 and sampling.temperature>0 (top-k/top-p distributions are not the policy "
                "whose ratios the loss uses; evaluation is greedy regardless)")
        if data.max_prompt_len > max(s.prompt_buckets):
            raise ConfigError(f"data.max_prompt_len={data.max_prompt_len} exceeds the largest of sampling.prompt_buckets "
                              f"{list(s.prompt_buckets)}: add a bucket >= {data.max_prompt_len} or lower "
                              "data.max_prompt_len")
        if alg.critic == "prompt":
            self._check_prompt_critic_rewards()
        if alg.overlong_buffer_frac is not None and "overlong" in dict(self.rewards.weights):
            raise ConfigError("algorithm.overlong_buffer_frac and the 'overlong' reward in rewards.weights would "
                              "penalise long responses twice: keep one (the algorithm's follows "
                              "sampling.max_new_tokens; set algorithm.overlong_buffer_frac=null to use the reward)")

    def _check_prompt_critic_rewards(self) -> None:
        """SPPO's prompt critic fits the reward with a binary cross-entropy, which has a minimum only
        for targets in [0, 1]: refuse what makes rewards leave that range (the run checks the actual
        rewards of every step too)."""
        weights = dict(self.rewards.weights)
        why = None
        if any(w < 0 for w in weights.values()):
            why = f"rewards.weights has negative weights {({k: w for k, w in weights.items() if w < 0})}"
        elif sum(weights.values()) > 1 + 1e-9:
            why = f"rewards.weights sum to {sum(weights.values()):g} > 1"
        elif "overlong" in weights:
            why = "the 'overlong' reward in rewards.weights scores in [-1, 0]"
        elif self.algorithm.overlong_buffer_frac is not None:
            why = "algorithm.overlong_buffer_frac adds a negative length penalty"
        if why is not None:
            raise ConfigError(f"algorithm.critic='prompt' ({self.algorithm.name}) fits the reward with a binary "
                              f"cross-entropy, which needs rewards in [0, 1], but {why}: use non-negative weights "
                              "of [0, 1] rewards summing to at most 1, without length penalties")

    @property
    def rows(self) -> int:
        """Rows of one rollout batch (prompts x group size)."""
        return self.data.batch_size * self.data.group_size

    @property
    def micro_batch_size(self) -> int:
        """Rows per micro-batch (the whole minibatch when unset or at least the minibatch)."""
        mb = self.rows // self.algorithm.num_minibatches
        return min(self.train.micro_batch_size or mb, mb)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def _algorithm_from_mapping(data: Any) -> AlgorithmConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"algorithm must be a mapping like {{preset: sspo, eps_high: 0.28}}, got {data!r}")
    data = dict(data)
    preset = data.pop("preset", data.get("name", "sspo"))
    if not isinstance(preset, str):
        raise ConfigError(f"algorithm.preset must be a preset name, got {preset!r}")
    base = presets.get(preset)
    fields = {f.name: f for f in dataclasses.fields(AlgorithmConfig)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {['algorithm.' + k for k in unknown]}; known keys of algorithm: "
                          f"['preset', {', '.join(repr(k) for k in sorted(fields))}]")
    import typing

    hints = typing.get_type_hints(AlgorithmConfig)
    changes = {}
    for key, value in data.items():
        if key == "segmentation" and isinstance(value, dict):
            seg = config_io.to_mapping(base.segmentation) | value
            changes[key] = config_io.from_mapping(type(base.segmentation), seg, "algorithm.segmentation")
        else:
            changes[key] = config_io.convert(hints[key], value, f"algorithm.{key}")
    try:
        return dataclasses.replace(base, **changes)
    except ConfigError as err:
        raise ConfigError(f"algorithm: {err}") from None


def config_from_mapping(data: dict[str, Any]) -> TrainConfig:
    """Builds and validates a `TrainConfig` from a nested mapping (e.g. parsed YAML)."""
    data = dict(data or {})
    sections = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - sections)
    if unknown:
        raise ConfigError(f"unknown config section(s) {unknown}; known sections: {sorted(sections)}")
    algorithm = _algorithm_from_mapping(data.pop("algorithm", None))
    data_section = dict(data.pop("data", None) or {})
    data_section.setdefault("group_size", algorithm.group_size)
    kwargs: dict[str, Any] = {"algorithm": algorithm}
    import typing

    hints = typing.get_type_hints(TrainConfig)
    kwargs["data"] = config_io.from_mapping(DataConfig, data_section, "data")
    for key, value in data.items():
        kwargs[key] = config_io.convert(hints[key], value, key)
    try:
        return TrainConfig(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Reads a YAML file (None = all defaults), applies dotted overrides, validates."""
    data = config_io.load_yaml(path) if path is not None else {}
    return config_from_mapping(config_io.apply_overrides(data, list(overrides)))


def config_to_mapping(cfg: TrainConfig) -> dict[str, Any]:
    """A plain nested dict of the resolved config (``algorithm.preset`` records the base preset)."""
    out = config_io.to_mapping(cfg)
    out["algorithm"] = {"preset": cfg.algorithm.name if cfg.algorithm.name in presets.PRESETS else "sspo",
                        **out["algorithm"]}
    return out
