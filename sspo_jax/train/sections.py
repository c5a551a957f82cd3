"""The sections of a `TrainConfig` other than the algorithm, sampling, data, rewards, mesh and
distributed ones (which live beside the code they configure): the model, the optimizer, the loop,
evaluation, checkpoints and logging. Each is a frozen dataclass validated on construction; an
impossible value is a `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

from sspo_jax.errors import ConfigError

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
      scan_layers: run the training forward's layers under one ``lax.scan`` (compile time
        independent of depth: the choice for deep models and accelerators); false unrolls it,
        which makes a shallow model's update about 8% faster on CPU (no stacked residual buffers)
        at a compile time that grows with depth. The same numbers either way.
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
    scan_layers: bool = True
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
      micro_batch_size: rows per gradient-accumulation micro-batch (and per stats-pass chunk);
        None, or a value at least the minibatch's rows, = the whole minibatch. Otherwise it must
        divide the minibatch. The gradient is that of the minibatch whatever this is (up to float
        summation order). On CPU, micro-batches of a few thousand tokens keep the activations in
        cache and run faster than one large batch; on an accelerator, use the largest that fits.
      max_consecutive_skips: stop with an error after this many consecutive non-finite updates.
      exact_on_policy_ratio: in an on-policy update (the first minibatch of the first epoch: the
        parameters are still those that sampled the batch) the loss uses ``old_logp =
        stop_gradient(logp)`` of its own forward, so every ratio is exactly 1 in any dtype (as verl
        does); the stats pass's old log-probs are then used only by the later (off-policy)
        minibatches and the drift metrics, and the stats pass skips them when nothing else needs
        them (`sspo_jax.train.step.needs_policy_stats`). False: the first minibatch uses the stats
        pass's log-probs, whose ratios differ from 1 by the numerics of two forwards (up to ~0.1 in
        bf16 compute).
      trim_multiple: the stats pass and the update run on the batch without the columns that are
        padding in every row (prompt-bucket padding on the left, columns after the longest
        response on the right). The kept widths are rounded up in steps of this many columns, or
        of 1/8 of the width when that is larger, so that a run compiles only a few widths (about
        8 per doubling of the length) and pads less than one step (`sspo_jax.train.records.trim`); 0 =
        the sampler's full width (prompt bucket + ``sampling.max_new_tokens``). The values
        computed are the same either way, up to float summation order.
    """

    steps: int = 100
    seed: int = 0
    micro_batch_size: Optional[int] = None
    max_consecutive_skips: int = 3
    exact_on_policy_ratio: bool = True
    trim_multiple: int = 8

    def __post_init__(self) -> None:
        if self.trim_multiple < 0:
            raise ConfigError(f"train.trim_multiple={self.trim_multiple} must be >= 0 (0 = no trimming)")
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
