"""Loading a trained run for inference: its config, tokenizer and policy parameters of one
checkpoint, without training machinery (no optimizer state, no dataset, no writes: a read-only
run directory is fine). ``sspo-jax eval``, ``export`` and ``plot`` use it.

    run = load_run("runs/try")                 # newest checkpoint; load_run(path, step=20) for another
    run.config, run.tokenizer, run.step, run.sampling
    model = run.model()                        # the policy as an nnx module (nnx.merge of its parts)

The ``params`` of the saved `TrainState` are read from Orbax with every other array left as a
placeholder (never read into memory), and checked against the fingerprints saved with the
checkpoint; with ``verify`` (the default) the other arrays are then read a params-sized group at a
time, checked and dropped. Peak memory is about two copies of the weights (the params and one group).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from sspo_jax.errors import CheckpointError, ConfigError, one_line
from sspo_jax.models import Qwen2Config, Qwen2ForCausalLM
from sspo_jax.rollout import SamplingConfig
from sspo_jax.train.build import checkpoint_stop_tokens, load_tokenizer, resolve_sampling
from sspo_jax.train.checkpoint import FINGERPRINT_KEY, CheckpointCorruptError, state_fingerprint
from sspo_jax.train.config import TrainConfig, load_config, resolve_model_path
from sspo_jax.train.state import TrainState

log = logging.getLogger(__name__)


def split_run_path(path: str | Path) -> tuple[Path, Optional[int]]:
    """``(run directory, step or None)`` from ``RUN_DIR`` or ``RUN_DIR/checkpoints/STEP``."""
    path = Path(path)
    if path.name.isdigit() and path.parent.name == "checkpoints":
        return path.parent.parent, int(path.name)
    return path, None


def is_run_dir(path: str | Path) -> bool:
    """True when `path` (or its run directory) is a run made by ``sspo-jax train``: it has a
    ``config.yaml`` and no ``config.json`` (which would make it a Hugging Face model directory)."""
    run, _ = split_run_path(path)
    return (run / "config.yaml").is_file() and not (run / "config.json").is_file()


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The complete checkpoints of a run, ascending (Orbax's finished step folders)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit() and (p / "state").is_dir())


@dataclasses.dataclass
class LoadedRun:
    """One checkpoint of a run, loaded for inference.

    Attributes:
      run_dir: the run directory.
      step: the checkpoint's step.
      config: the run's `TrainConfig` (with the overrides given to `load_run`).
      model_dir: the base model directory (tokenizer and generation files come from it).
      tokenizer: the run's tokenizer.
      sampling: the run's sampling settings with stop tokens and pad id resolved.
      graphdef, params: the policy split by `nnx.split` (params None with ``weights=False``).
      model_config: the policy's architecture.
    """

    run_dir: Path
    step: int
    config: TrainConfig
    model_dir: Path
    tokenizer: Any
    sampling: SamplingConfig
    graphdef: Any
    params: Any
    model_config: Any

    def model(self) -> Any:
        """The policy as an nnx module."""
        if self.params is None:
            raise ConfigError("this run was loaded with weights=False")
        return nnx.merge(self.graphdef, self.params)


def abstract_train_state(cfg: TrainConfig, model_config: Any, abstract_params: Any) -> TrainState:
    """The shapes and dtypes of the `TrainState` that training with `cfg` saves (no memory is used):
    the same structure, so its leaf order is the order of the checkpoint's fingerprints."""
    from sspo_jax.models import PromptCritic, TokenValueModel
    from sspo_jax.train import optim

    alg = cfg.algorithm
    dtype = jnp.dtype(cfg.model.dtype)
    compute = jnp.dtype(cfg.model.compute_dtype) if cfg.model.compute_dtype else None
    total = cfg.train.steps * alg.ppo_epochs * alg.num_minibatches
    opt_state = jax.eval_shape(optim.make_optimizer(cfg.optim, total).init, abstract_params)
    critic_params = critic_opt = None
    if alg.critic != "none":
        cls = TokenValueModel if alg.critic == "token" else PromptCritic
        critic_cfg = Qwen2Config.from_pretrained_dir(resolve_model_path(cfg.model.critic_path)) \
            if cfg.model.critic_path else model_config
        critic = nnx.eval_shape(lambda: cls(critic_cfg, rngs=nnx.Rngs(0), param_dtype=dtype, compute_dtype=compute))
        critic_params = nnx.split(critic)[1]
        critic_opt = jax.eval_shape(optim.make_optimizer(cfg.optim, total, critic=True).init, critic_params)
    scalar = jax.ShapeDtypeStruct
    return TrainState(step=scalar((), jnp.int32), rng=scalar((2,), jnp.uint32), params=abstract_params,
                      opt_state=opt_state, critic_params=critic_params, critic_opt_state=critic_opt,
                      ref_params=abstract_params if alg.needs_ref_logp else None)


def _restore_leaves(where: Path, abstract: TrainState, wanted: set[int]) -> list:
    """The leaves `wanted` (indices into ``jax.tree.leaves(abstract)``) of the saved state, read
    alone: every other leaf is an Orbax placeholder, so it is neither read nor held in memory."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    leaves, treedef = jax.tree.flatten(abstract)
    item = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device) if i in wanted else ocp.PLACEHOLDER
            for i, x in enumerate(leaves)]
    args = [ocp.ArrayRestoreArgs(dtype=x.dtype, sharding=device) if i in wanted else ocp.PLACEHOLDER
            for i, x in enumerate(leaves)]
    with ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(where / "state", args=ocp.args.PyTreeRestore(
            item=jax.tree.unflatten(treedef, item), restore_args=jax.tree.unflatten(treedef, args)))
    got = jax.tree.leaves(restored, is_leaf=lambda x: x is ocp.PLACEHOLDER)
    return [got[i] for i in sorted(wanted)]


def _read_checkpoint(run_dir: Path, step: int, abstract: TrainState, *, verify: bool) -> Any:
    """The policy params of checkpoint `step`, checked against the fingerprints saved with it; with
    `verify`, every other array of the checkpoint is read too, a group at a time (each no larger than
    the params), checked and dropped, so a damaged checkpoint is refused whatever part is damaged."""
    where = run_dir / "checkpoints" / str(step)
    meta_file = where / "meta" / "metadata"
    saved = json.loads(meta_file.read_text()).get(FINGERPRINT_KEY) if meta_file.is_file() else None
    leaves = jax.tree.leaves(abstract)
    n_params = len(jax.tree.leaves(abstract.params))
    param_idx = set(range(2, 2 + n_params))  # TrainState leaves: step, rng, then the params
    params_leaves = _restore_leaves(where, abstract, param_idx)
    groups: list[set[int]] = []
    if verify and saved is not None:
        budget = max(sum(x.size * x.dtype.itemsize for x in params_leaves), 1)
        size = budget
        for i in (i for i in range(len(leaves)) if i not in param_idx):
            nbytes = int(np.prod(leaves[i].shape)) * leaves[i].dtype.itemsize
            if size + nbytes > budget:
                groups.append(set())
                size = 0
            groups[-1].add(i)
            size += nbytes
    if saved is not None:
        if len(saved) != len(leaves):
            raise CheckpointCorruptError(f"checkpoint {where} does not hold the state this config trains "
                                         f"({len(saved)} arrays saved, {len(leaves)} expected)")
        reads = [(sorted(param_idx), lambda: params_leaves)]
        reads += [(sorted(g), lambda g=g: _restore_leaves(where, abstract, g)) for g in groups]
        for idx, read in reads:  # one group in memory at a time
            arrays = read()
            if [saved[i] for i in idx] != state_fingerprint(arrays):
                raise CheckpointCorruptError(f"checkpoint {where} is corrupt: its data differs from what was saved")
            del arrays
    return jax.tree.unflatten(jax.tree.structure(abstract.params), params_leaves)


def _read_newest(run_dir: Path, steps: list[int], abstract: TrainState, verify: bool) -> tuple[int, Any]:
    skipped: list[int] = []
    for step in reversed(steps):
        try:
            params = _read_checkpoint(run_dir, step, abstract, verify=verify)
        except Exception as err:  # noqa: BLE001 - any read failure means "corrupt": try the previous one
            log.warning("checkpoint %s/checkpoints/%d is unreadable or corrupt (%s); falling back to the previous "
                        "one", run_dir, step, one_line(err, 300))
            skipped.append(step)
            continue
        if skipped:
            log.warning("loaded checkpoint %s/checkpoints/%d instead of the unreadable newer checkpoint(s) %s",
                        run_dir, step, skipped)
        return step, params
    raise CheckpointError(f"every checkpoint in {run_dir / 'checkpoints'} {steps} is unreadable or corrupt (see the "
                          "warnings above); move that directory away, or name a checkpoint of another run")


def load_run(path: str | Path, step: Optional[int] = None, *, overrides: tuple[str, ...] | list[str] = (),
             weights: bool = True, verify: bool = True) -> LoadedRun:
    """Loads checkpoint `step` (None = the newest; or the step in ``RUN_DIR/checkpoints/STEP``) of a run.

    Args:
      path: ``RUN_DIR`` or ``RUN_DIR/checkpoints/STEP``.
      step: the checkpoint step (overrides one in `path`).
      overrides: dotted config overrides (e.g. ``eval.size=64``).
      weights: read the policy parameters (False: config, tokenizer and step only).
      verify: also read and check every other array of the checkpoint against its fingerprints (a
        group at a time, never more than one params-sized group beside the params), so a damaged
        checkpoint is refused whatever part is damaged; without a step, the newest intact one is
        loaded (with a warning naming the damaged ones).
    Raises:
      ConfigError: `path` is not a run directory (no config.yaml), or the config is invalid.
      CheckpointError: the run has no checkpoint, `step` is not one, or it is unreadable or corrupt.
    """
    run, path_step = split_run_path(Path(path).expanduser().absolute())  # Orbax needs absolute paths
    step = step if step is not None else path_step
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{str(run)!r} is not a run directory: it has no config.yaml (give RUN_DIR or "
                          "RUN_DIR/checkpoints/STEP of a run made by sspo-jax train)")
    steps = checkpoint_steps(run)
    if not steps:
        raise CheckpointError(f"run directory {str(run)!r} holds no checkpoint ({run / 'checkpoints'} has no "
                              "complete step): train it first, with checkpoint.enabled=true")
    explicit = step is not None
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise CheckpointError(f"no checkpoint of step {step} in {run / 'checkpoints'}; available: {steps}")
    cfg = load_config(run / "config.yaml", ["logging.progress=false", "logging.tensorboard=false", *overrides])
    model_dir = resolve_model_path(cfg.model.path)
    if not model_dir.is_dir():
        raise ConfigError(f"model.path={cfg.model.path!r} of {run / 'config.yaml'}: directory {str(model_dir)!r} "
                          "does not exist (the run's tokenizer and architecture come from it)")
    model_config = Qwen2Config.from_pretrained_dir(model_dir)
    tokenizer = load_tokenizer(resolve_model_path(cfg.model.tokenizer_path) if cfg.model.tokenizer_path
                               else model_dir)
    sampling = resolve_sampling(cfg.sampling, tokenizer, model_config.eos_token_id,
                                checkpoint_stops=checkpoint_stop_tokens(cfg, model_dir),
                                vocab_size=model_config.vocab_size)
    graphdef = params = None
    if weights:
        compute = cfg.model.compute_dtype
        abstract = nnx.eval_shape(lambda: Qwen2ForCausalLM(model_config, rngs=nnx.Rngs(0),
                                                           param_dtype=jnp.dtype(cfg.model.dtype),
                                                           compute_dtype=compute and jnp.dtype(compute)))
        graphdef, abstract_params = nnx.split(abstract)
        state = abstract_train_state(cfg, model_config, abstract_params)
        if explicit:
            try:
                params = _read_checkpoint(run, step, state, verify=verify)
            except Exception as err:  # noqa: BLE001 - unreadable or damaged: a user-facing error naming it
                raise CheckpointError(f"checkpoint {run / 'checkpoints' / str(step)} is unreadable or corrupt "
                                      f"({one_line(err, 300)}); choose another step of {steps}") from None
        else:
            step, params = _read_newest(run, steps, state, verify)
    return LoadedRun(run_dir=run, step=step, config=cfg, model_dir=model_dir, tokenizer=tokenizer, sampling=sampling,
                     graphdef=graphdef, params=params, model_config=model_config)
