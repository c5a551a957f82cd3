"""Building a run from its `TrainConfig`: the checks that need the machine, the tokenizer, the
models, the optimizers and the initial `TrainState` (everything the trainer drives).

    parts = build_run(cfg, run_dir, echo=print)
    parts.state, parts.models, parts.tokenizer, parts.sampling, parts.rows, parts.policy_tx, ...

What a config alone can refuse is refused by `TrainConfig`'s validation (so ``load_config`` and
``compare`` refuse it too); what needs the machine (devices, processes, the run directory's disk,
the model directory, the reward functions being importable) is checked here, before any model loads.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sspo_jax.algorithms import build_delimiter_table
from sspo_jax.errors import ConfigError
from sspo_jax.models import PromptCritic, Qwen2Config, TokenValueModel, from_pretrained, read_stop_tokens
from sspo_jax.parallel import (MeshConfig, check_row_split, make_mesh, multiprocess, replicated, resolve, shard_like,
                               sharding_for)
from sspo_jax.rewards import get_reward, resolve_rewards
from sspo_jax.rollout import SamplingConfig
from sspo_jax.train import optim
from sspo_jax.train.config import TrainConfig, resolve_model_path
from sspo_jax.train.host_rows import HostRows
from sspo_jax.train.state import TrainState
from sspo_jax.train.step import Models

log = logging.getLogger(__name__)


def load_tokenizer(path: str | Path):
    """A local Hugging Face tokenizer (no network).

    Raises:
      ConfigError: the directory does not exist or holds no loadable tokenizer.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"tokenizer directory {str(path)!r} does not exist")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - transformers raises many types here
        raise ConfigError(f"cannot load a tokenizer from {str(path)!r}: {err}") from None


def check_writable(run_dir: Path) -> None:
    """Fails before training starts when the run directory cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # processes of a multi-host job share the directory: one probe file each
        probe = run_dir / (".write-probe" if jax.process_count() == 1 else f".write-probe-{jax.process_index()}")
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"run directory {str(run_dir)!r} is not writable ({err.strerror}); "
                          "choose another --run-dir or free disk space") from None


def check_disk_space(run_dir: Path, checkpoint_bytes: int, keep: int) -> None:
    """Fails before training starts when not even one checkpoint fits on the run directory's disk,
    and warns when `keep` checkpoints (plus the one being written) do not."""
    free = shutil.disk_usage(run_dir).free
    mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
    if free < checkpoint_bytes:
        raise ConfigError(f"run directory {str(run_dir)!r} has {mib(free)} free, but one checkpoint needs about "
                          f"{mib(checkpoint_bytes)}: free disk space, choose another --run-dir, or set "
                          "checkpoint.enabled=false")
    if free < checkpoint_bytes * (keep + 1):
        log.warning("run directory %s has %s free: not enough for checkpoint.keep=%d checkpoints of about %s "
                    "each plus the one being written; a later save may fail", run_dir, mib(free), keep,
                    mib(checkpoint_bytes))


def _as_tuple(x) -> tuple:
    if x is None:
        return ()
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


def resolve_sampling(sampling: SamplingConfig, tokenizer: Any, model_eos: Any, *,
                     checkpoint_stops: tuple[int, ...] = (), vocab_size: Optional[int] = None) -> SamplingConfig:
    """`sampling` with its stop tokens and pad id filled in.

    Stop tokens: the configured ``sampling.eos_token_ids``, then `checkpoint_stops` (the
    checkpoint's ``generation_config.json`` and ``config.json`` eos ids, e.g. ``<|im_end|>`` of a
    chat model, see `sspo_jax.models.read_stop_tokens`), then the tokenizer's eos id; when nothing
    is configured and the checkpoint names none, the tokenizer's and the model config's eos ids.
    Each id once, in that order. Pad = the tokenizer's pad id, else the first stop id.

    Raises:
      ConfigError: no stop token can be found, or a stop id is outside the vocabulary.
    """
    found = [*sampling.eos_token_ids, *checkpoint_stops, tokenizer.eos_token_id]
    if not sampling.eos_token_ids and not checkpoint_stops:
        found += list(_as_tuple(model_eos))
    eos = tuple(dict.fromkeys(int(i) for i in found if i is not None))
    if not eos:
        raise ConfigError("no stop token: set sampling.eos_token_ids (the tokenizer has no eos_token_id)")
    if vocab_size is not None and any(i >= vocab_size for i in eos):
        raise ConfigError(f"sampling.eos_token_ids: stop token id(s) {[i for i in eos if i >= vocab_size]} are outside "
                          f"the model's vocabulary of {vocab_size} ids")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    return sampling.replace(eos_token_ids=eos, pad_token_id=int(pad))


def checkpoint_stop_tokens(cfg: TrainConfig, model_dir: Path) -> tuple[int, ...]:
    """The checkpoint's own stop ids when ``model.stop_tokens_from_checkpoint``, else ()."""
    return read_stop_tokens(model_dir) if cfg.model.stop_tokens_from_checkpoint else ()


def _wants_processes(cfg: TrainConfig) -> bool:
    """True when the config or the environment asks for a multi-process job."""
    try:
        return resolve(cfg.distributed) is not None
    except ConfigError:
        return True


@dataclasses.dataclass
class RunParts:
    """Everything a run is built from (see the module docstring)."""

    model_dir: Path
    tokenizer: Any
    model_config: Qwen2Config
    models: Models
    sampling: SamplingConfig
    mesh: Any
    rows: HostRows
    state: TrainState
    policy_tx: optax.GradientTransformation
    critic_tx: Optional[optax.GradientTransformation]
    lr_schedule: optax.Schedule
    updates_per_step: int
    delimiter_table: Any


def build_run(cfg: TrainConfig, run_dir: Path, *, echo: Callable[[str], None] = print) -> RunParts:
    """Checks the machine-dependent settings, loads the tokenizer and models, builds the optimizers
    and the initial state (see the module docstring).

    Raises:
      ConfigError (or another `SspoError`): a one-line message naming what to fix.
    """
    alg = cfg.algorithm
    procs = jax.process_count()
    resolve_rewards(cfg.rewards)  # a reward that cannot be found fails now, not after the first rollout
    get_reward(cfg.eval.reward)
    check_writable(run_dir)
    model_dir = resolve_model_path(cfg.model.path)
    if not model_dir.is_dir():
        raise ConfigError(f"model.path={cfg.model.path!r}: directory {str(model_dir)!r} does not exist")
    Qwen2Config.from_pretrained_dir(model_dir)  # a bad config.json is named as such, not as a tokenizer error
    tokenizer = load_tokenizer(resolve_model_path(cfg.model.tokenizer_path) if cfg.model.tokenizer_path else model_dir)
    mesh_cfg = cfg.mesh
    if mesh_cfg is None and multiprocess():
        mesh_cfg = MeshConfig()  # no mesh given: data parallel over every device of the job
        echo(f"{procs} processes, no mesh configured: data parallel over all {jax.device_count()} devices "
             "(set mesh.fsdp / mesh.tensor to shard the weights)")
    elif not multiprocess() and _wants_processes(cfg):
        log.warning("the distributed settings ask for several processes but JAX runs in one: call "
                    "sspo_jax.parallel.initialize(cfg.distributed) before any JAX computation (sspo-jax train "
                    "does); training on this process's devices alone")
    mesh = make_mesh(mesh_cfg) if mesh_cfg is not None else None
    if multiprocess() and cfg.data.batch_size % procs:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be a multiple of the {procs} processes: "
                          "each process takes data.batch_size / processes prompts of every batch")
    if mesh is not None:
        check_row_split(mesh, cfg.rows, alg.group_size)
    dtype = jnp.dtype(cfg.model.dtype)
    compute = jnp.dtype(cfg.model.compute_dtype) if cfg.model.compute_dtype else None
    place = sharding_for(mesh) if mesh is not None else None  # weights go straight to their shards
    policy = from_pretrained(model_dir, dtype=dtype, compute_dtype=compute, remat=cfg.model.remat,
                             scan_layers=cfg.model.scan_layers, sharding_for=place)
    vocab = policy.config.vocab_size
    if len(tokenizer) > vocab:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} ids but the model's vocab_size is {vocab}: "
                          "the tokenizer does not belong to this model")
    policy_gd, params = nnx.split(policy)
    critic_gd = critic_params = None
    if alg.critic != "none":
        critic_cls = TokenValueModel if alg.critic == "token" else PromptCritic
        critic_dir = resolve_model_path(cfg.model.critic_path) if cfg.model.critic_path else model_dir
        critic = critic_cls.from_policy_checkpoint(critic_dir, seed=cfg.train.seed, dtype=dtype, compute_dtype=compute,
                                                   remat=cfg.model.remat, head_init_std=cfg.model.critic_head_init_std,
                                                   scan_layers=cfg.model.scan_layers, sharding_for=place)
        critic_gd, critic_params = nnx.split(critic)
    sampling = resolve_sampling(cfg.sampling, tokenizer, policy.config.eos_token_id,
                                checkpoint_stops=checkpoint_stop_tokens(cfg, model_dir), vocab_size=vocab)
    updates_per_step = alg.ppo_epochs * alg.num_minibatches
    total_updates = cfg.train.steps * updates_per_step
    # critic warm-up: the policy's first update (schedule count 0) comes after the K warm-up steps
    policy_updates = (cfg.train.steps - alg.critic_warmup_steps) * updates_per_step
    policy_tx = optim.make_optimizer(cfg.optim, policy_updates)
    critic_tx = optim.make_optimizer(cfg.optim, total_updates, critic=True) if critic_gd is not None else None
    opt_state = policy_tx.init(params)
    critic_opt = critic_tx.init(critic_params) if critic_params is not None else None
    if mesh is not None:  # optimizer state follows its parameters
        opt_state = shard_like(opt_state, params, mesh)
        critic_opt = shard_like(critic_opt, critic_params, mesh) if critic_opt is not None else None
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(cfg.train.seed)),
                       params=params, opt_state=opt_state, critic_params=critic_params, critic_opt_state=critic_opt,
                       ref_params=jax.tree.map(jnp.copy, params) if alg.needs_ref_logp else None)
    if mesh is not None:  # scalars live on every device of the mesh, like the parameters
        state = state.replace(step=jax.device_put(state.step, replicated(mesh)),
                              rng=jax.device_put(state.rng, replicated(mesh)))
    return RunParts(model_dir=model_dir, tokenizer=tokenizer, model_config=policy.config,
                    models=Models(policy=policy_gd, critic=critic_gd, critic_kind=alg.critic), sampling=sampling,
                    mesh=mesh, rows=HostRows(mesh, procs), state=state, policy_tx=policy_tx, critic_tx=critic_tx,
                    lr_schedule=optim.learning_rate_schedule(cfg.optim, policy_updates),
                    updates_per_step=updates_per_step,
                    delimiter_table=build_delimiter_table(tokenizer, alg.segmentation, vocab_size=vocab))


def state_bytes(state: Any) -> int:
    """Bytes of every array in `state` (the size of one checkpoint, roughly)."""
    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state)))
