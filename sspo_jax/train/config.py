"""`TrainConfig`: the whole training job as one frozen, validated dataclass tree.

YAML layout (every section optional; see configs/ for complete files)::

    model:      {path, dtype, compute_dtype, remat, logprob_chunk_size, critic_path}
    algorithm:  {preset: sspo, <any AlgorithmConfig field>: value}
    sampling:   SamplingConfig fields (max_new_tokens, temperature, top_p, top_k, ...)
    data:       DataConfig fields (source, path, batch_size, ...); group_size defaults to the
                algorithm's group_size
    rewards:    RewardConfig fields (weights, workers, timeout_s, ...)
    optim:      {lr, schedule, warmup_steps, weight_decay, max_grad_norm, critic_lr, ...}
    train:      {steps, seed, micro_batch_size, max_consecutive_skips}
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
from typing import Any, Literal, Optional

from sspo_jax.algorithms import presets
from sspo_jax.algorithms.config import AlgorithmConfig, ConfigError
from sspo_jax.data import DataConfig
from sspo_jax.parallel.distributed import DistributedConfig
from sspo_jax.parallel.mesh import MeshConfig
from sspo_jax.rewards import RewardConfig
from sspo_jax.rollout import SamplingConfig
from sspo_jax.train import config_io

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
BUILTIN_PREFIX = "builtin:"


def resolve_model_path(path: str) -> Path:
    """``builtin:NAME`` is a model shipped in ``sspo_jax/assets/NAME``; anything else a local path."""
    if path.startswith(BUILTIN_PREFIX):
        name = path[len(BUILTIN_PREFIX):]
        resolved = ASSETS_DIR / name
        if not resolved.is_dir():
            known = sorted(p.name for p in ASSETS_DIR.iterdir() if p.is_dir()) if ASSETS_DIR.is_dir() else []
            raise ConfigError(f"model.path={path!r}: no built-in model {name!r}; built-in models: {known}")
        return resolved
    return Path(path).expanduser()


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The policy (and critic) checkpoints and numerics.

    Attributes:
      path: a local Hugging Face Qwen2 directory, or ``builtin:tiny-arith`` (shipped in the package).
      tokenizer_path: directory of the tokenizer; None = `path`.
      dtype: parameter dtype, ``float32`` or ``bfloat16``.
      compute_dtype: activation dtype; None = `dtype` (``bfloat16`` over fp32 params = mixed precision).
      remat: recompute layer activations in the backward pass (less memory, more compute).
      logprob_chunk_size: sequence chunk of the vocabulary projection for log-probs and entropy.
      critic_path: checkpoint the critic's backbone starts from (PPO/SPPO); None = the policy's.
      critic_head_init_std: standard deviation of the critic head's fresh kernel.
      stop_tokens_from_checkpoint: also stop generation at the eos ids of the checkpoint's
        ``generation_config.json`` and ``config.json`` (e.g. ``<|im_end|>`` of chat models), merged
        with ``sampling.eos_token_ids``; false = only the configured ids (or the tokenizer's eos).
    """

    path: str = "builtin:tiny-arith"
    tokenizer_path: Optional[str] = None
    dtype: Literal["float32", "bfloat16"] = "float32"
    compute_dtype: Optional[Literal["float32", "bfloat16"]] = None
    remat: bool = False
    logprob_chunk_size: int = 256
    critic_path: Optional[str] = None
    critic_head_init_std: float = 1e-3
    stop_tokens_from_checkpoint: bool = True

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("model.path is empty: set it to a local Hugging Face Qwen2 directory or builtin:tiny-arith")
        if self.logprob_chunk_size < 1:
            raise ConfigError(f"model.logprob_chunk_size={self.logprob_chunk_size} must be >= 1")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup and a schedule, global-norm clipping (policy; the critic has its own lr).

    Attributes:
      lr: peak learning rate of the policy.
      schedule: ``constant``, ``cosine`` or ``linear`` decay after warmup (to lr * min_lr_ratio).
      warmup_steps: linear warmup from 0 over this many optimizer steps.
      min_lr_ratio: final learning rate as a fraction of lr (cosine/linear).
      weight_decay: decoupled weight decay.
      b1, b2: Adam's decay rates of the first and second moment estimates.
      eps: Adam's epsilon added to the denominator.
      max_grad_norm: clip the global gradient norm to this; None = no clipping.
      critic_lr: learning rate of the critic (PPO, SPPO).
      moment_dtype: dtype of AdamW's first and second moments (policy and critic): ``float32``
        (default: fp32 moments even over bf16 parameters), ``bfloat16`` (half the optimizer
        memory, coarser moments), or null = each parameter's own dtype. Gradients are always
        accumulated over micro-batches in fp32; the update is cast to the parameter dtype. With
        ``model.dtype=bfloat16`` the weights themselves are bf16 (no fp32 master copy), so an
        update below a weight's bf16 resolution (about 2^-8 of its magnitude) is rounded away;
        fp32 weights with ``model.compute_dtype=bfloat16`` keep fp32 master weights.
    """

    lr: float = 1e-6
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: Optional[float] = 1.0
    critic_lr: float = 1e-5
    moment_dtype: Optional[Literal["float32", "bfloat16"]] = "float32"

    def __post_init__(self) -> None:
        if self.moment_dtype not in (None, "float32", "bfloat16"):
            raise ConfigError(f"optim.moment_dtype={self.moment_dtype!r} must be float32, bfloat16 or null "
                              "(= the parameter dtype)")
        if not self.lr > 0:
            raise ConfigError(f"optim.lr={self.lr} must be > 0")
        if not self.critic_lr > 0:
            raise ConfigError(f"optim.critic_lr={self.critic_lr} must be > 0")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay={self.weight_decay} must be >= 0")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1 and self.eps > 0):
            raise ConfigError(f"optim.b1={self.b1}, b2={self.b2} must be in [0, 1) and eps={self.eps} > 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"optim.max_grad_norm={self.max_grad_norm} must be None or > 0")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The outer loop.

    Attributes:
      steps: RL iterations (each: generate, score, update). Total, across resumes.
      seed: PRNG seed of sampling and minibatch shuffling.
      micro_batch_size: rows per gradient-accumulation micro-batch; None = the whole minibatch.
        The gradient is exactly that of the minibatch whatever this is.
      max_consecutive_skips: stop with an error after this many consecutive non-finite updates.
      exact_on_policy_ratio: in an on-policy update (the first minibatch of the first epoch: the
        parameters are still those that sampled the batch) the loss uses ``old_logp =
        stop_gradient(logp)`` of its own forward, so every ratio is exactly 1 in any dtype (as verl
        does); the stats pass's old log-probs are then used only by the later (off-policy)
        minibatches and the drift metrics, and the stats pass skips them when nothing else needs
        them (`sspo_jax.train.step.needs_policy_stats`). False: the first minibatch uses the stats
        pass's log-probs, whose ratios differ from 1 by the numerics of two forwards (up to ~0.1 in
        bf16 compute).
    """

    steps: int = 100
    seed: int = 0
    micro_batch_size: Optional[int] = None
    max_consecutive_skips: int = 3
    exact_on_policy_ratio: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"train.steps={self.steps} must be >= 1")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError(f"train.micro_batch_size={self.micro_batch_size} must be None or >= 1")
        if self.max_consecutive_skips < 1:
            raise ConfigError(f"train.max_consecutive_skips={self.max_consecutive_skips} must be >= 1")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Held-out accuracy.

    Attributes:
      every: evaluate every this many steps (0 = only before training and at the end).
      size: number of held-out problems (the built-in task draws them from a separate seed).
      batch_size: prompts per generation call.
      reward: the correctness reward that defines accuracy (score 1 = correct).
      path: held-out JSONL/Parquet file for file sources (same fields as `data`); None = no
        evaluation for file sources.
      samples: k responses per problem at the sampling temperature for pass@k (0 = greedy only).
      max_new_tokens: the response budget of evaluation; None = ``sampling.max_new_tokens``. Watch
        ``eval/truncated_frac``: answers cut at the budget score 0.
      enabled: evaluate at all.
    """

    every: int = 0
    size: int = 128
    batch_size: int = 64
    reward: str = "math"
    path: Optional[str] = None
    samples: int = 0
    max_new_tokens: Optional[int] = None
    enabled: bool = True

    def __post_init__(self) -> None:
        for name in ("every", "samples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"eval.{name}={getattr(self, name)} must be >= 0")
        for name in ("size", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.{name}={getattr(self, name)} must be >= 1")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"eval.max_new_tokens={self.max_new_tokens} must be None or >= 1")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints in ``RUN_DIR/checkpoints`` (every `every` steps and at the end; keep `keep`).

    Attributes:
      every: save every this many steps (and always after the last step).
      keep: number of newest checkpoints kept on disk.
      enabled: save checkpoints at all (and resume from them).
    """

    every: int = 10
    keep: int = 3
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError(f"checkpoint.every={self.every} must be >= 1")
        if self.keep < 1:
            raise ConfigError(f"checkpoint.keep={self.keep} must be >= 1")


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Metrics go to ``RUN_DIR/metrics.jsonl`` always; TensorBoard events and a progress bar optionally.

    Attributes:
      tensorboard: also write TensorBoard event files to ``RUN_DIR/tensorboard``.
      progress: show a console progress bar (tqdm) with reward, accuracy and clip fraction.
    """

    tensorboard: bool = True
    progress: bool = True


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
        if micro is not None and mb_rows % micro:
            raise ConfigError(f"train.micro_batch_size={micro} must divide the minibatch of {mb_rows} rows "
                              f"(rows {rows} / num_minibatches {alg.num_minibatches})")
        if alg.dynamic_sampling and alg.group_size < 2:
            raise ConfigError("algorithm.dynamic_sampling needs group_size >= 2")
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
        """Rows per micro-batch (the whole minibatch when unset)."""
        mb = self.rows // self.algorithm.num_minibatches
        return self.train.micro_batch_size or mb

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
