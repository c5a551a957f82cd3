"""The RL loop: prompts -> G responses each -> rewards -> token statistics -> segments ->
advantages -> update epochs, with metrics, evaluation and checkpoints (auto-resume).

    trainer = Trainer(load_config("configs/tiny_sspo.yaml"))
    summary = trainer.run()            # resumes from RUN_DIR/checkpoints when present

Every device computation is jitted once per shape (prompt widths are bucketed); the host does
what is inherently host work: reading prompts, decoding responses, verifying answers.

Multi-host (several processes, `sspo_jax.parallel.initialize` called first): every process reads
every global prompt batch (the data cursor stays identical everywhere), keeps, samples, decodes and
scores the rows its devices hold, and the global arrays are assembled from those rows; metrics are
reduced over all processes. Only process 0 writes the run directory's files (config, metrics,
TensorBoard, summary) and prints; Orbax checkpoints are written by all processes together.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from flax import nnx

from sspo_jax.algorithms import advantages as adv_lib
from sspo_jax.algorithms import build_delimiter_table, segment_entropy_stats, segment_ids
from sspo_jax.algorithms.config import ConfigError
from sspo_jax.data import PromptBatch, PromptBatcher, build_source
from sspo_jax.models import PromptCritic, Qwen2Config, TokenValueModel, from_pretrained
from sspo_jax.parallel import (MeshConfig, check_row_split, from_local_rows, gather, gather_local_rows,
                               is_main_process, local_rows, make_mesh, multiprocess, process_rows,
                               replicated, resolve, shard_like, sharding_for)
from sspo_jax.parallel.host_data import all_processes, per_process, reduce_metrics
from sspo_jax.rewards import compute_rewards, overlong_penalty
from sspo_jax.rollout import GenerationResult, generate
from sspo_jax.train import optim
from sspo_jax.train.checkpoint import Checkpointer
from sspo_jax.train.config import TrainConfig, config_to_mapping, resolve_model_path
from sspo_jax.train.evaluate import (build_eval_batches, correctness, decode_responses, eval_data_config,
                                     evaluate_policy)
from sspo_jax.train.logging_io import MetricsWriter
from sspo_jax.train.state import RolloutBatch, TrainState
from sspo_jax.train.step import Models, make_stats_fn, make_update_fn

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many consecutive non-finite updates)."""


def load_tokenizer(path: str | Path):
    """A local Hugging Face tokenizer (no network)."""
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


def _left_pad(x: np.ndarray, width: int, value) -> np.ndarray:
    extra = width - x.shape[1]
    if extra <= 0:
        return x
    return np.concatenate([np.full((x.shape[0], extra, *x.shape[2:]), value, x.dtype), x], axis=1)


@dataclasses.dataclass
class _Rollout:
    """Host-side rows of a scored rollout (numpy), before the device statistics pass."""

    tokens: np.ndarray
    attention_mask: np.ndarray
    response_mask: np.ndarray
    sampler_logp: np.ndarray
    prompt_width: int
    rewards: np.ndarray
    correct: np.ndarray
    lengths: np.ndarray
    truncated: np.ndarray
    reward_metrics: dict[str, float]

    def rows(self, idx: np.ndarray) -> "_Rollout":
        pick = lambda a: a[idx]  # noqa: E731
        return dataclasses.replace(self, tokens=pick(self.tokens), attention_mask=pick(self.attention_mask),
                                   response_mask=pick(self.response_mask), sampler_logp=pick(self.sampler_logp),
                                   rewards=pick(self.rewards), correct=pick(self.correct),
                                   lengths=pick(self.lengths), truncated=pick(self.truncated))

    def widen(self, prompt_width: int) -> "_Rollout":
        """Left-pads the prompt region to `prompt_width` columns (masks 0; positions follow masks)."""
        w = prompt_width - self.prompt_width + self.tokens.shape[1]
        return dataclasses.replace(
            self, tokens=_left_pad(self.tokens, w, 0), attention_mask=_left_pad(self.attention_mask, w, False),
            response_mask=_left_pad(self.response_mask, w, False), sampler_logp=_left_pad(self.sampler_logp, w, 0.0),
            prompt_width=prompt_width)


def _concat(parts: list[_Rollout]) -> _Rollout:
    width = max(p.prompt_width for p in parts)
    parts = [p.widen(width) for p in parts]
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return _Rollout(tokens=cat("tokens"), attention_mask=cat("attention_mask"), response_mask=cat("response_mask"),
                    sampler_logp=cat("sampler_logp"), prompt_width=width, rewards=cat("rewards"),
                    correct=cat("correct"), lengths=cat("lengths"), truncated=cat("truncated"),
                    reward_metrics=parts[0].reward_metrics)


class Trainer:
    """Builds everything from a `TrainConfig` and runs the RL loop.

    Args:
      cfg: the job.
      run_dir: overrides ``cfg.run_dir``.
      progress: show a progress bar (default ``cfg.logging.progress``).
      echo: where human-readable lines go (default `print`).
      resume: restore a checkpoint found in ``RUN_DIR/checkpoints`` (the newest, or `resume_step`).
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | Path | None = None, *, progress: Optional[bool] = None,
                 echo: Callable[[str], None] = print, resume: bool = True, resume_step: Optional[int] = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir or cfg.run_dir)
        self.main = is_main_process()  # process 0 (or the only one) prints and writes the run's files
        self.echo = echo if self.main else (lambda s: None)
        self.progress = (cfg.logging.progress if progress is None else progress) and self.main
        self.procs = jax.process_count()  # the batch rows are split into this many equal parts
        alg = cfg.algorithm
        if cfg.sampling.top_k or cfg.sampling.top_p < 1 or cfg.sampling.temperature == 0:
            raise ConfigError(
                "training samples from the full softmax(logits / temperature): set sampling.top_k=0, "
                "sampling.top_p=1 and sampling.temperature>0 (top-k/top-p distributions are not the policy "
                "whose ratios the loss uses; evaluation is greedy regardless)")
        check_writable(self.run_dir)

        model_dir = resolve_model_path(cfg.model.path)
        if not model_dir.is_dir():
            raise ConfigError(f"model.path={cfg.model.path!r}: directory {str(model_dir)!r} does not exist")
        self.model_dir = model_dir
        Qwen2Config.from_pretrained_dir(model_dir)  # a bad config.json is named as such, not as a tokenizer error
        self.tokenizer = load_tokenizer(resolve_model_path(cfg.model.tokenizer_path) if cfg.model.tokenizer_path
                                        else model_dir)
        dtype = jnp.dtype(cfg.model.dtype)
        compute = jnp.dtype(cfg.model.compute_dtype) if cfg.model.compute_dtype else None
        mesh_cfg = cfg.mesh
        if mesh_cfg is None and multiprocess():
            mesh_cfg = MeshConfig()  # no mesh given: data parallel over every device of the job
            self.echo(f"{self.procs} processes, no mesh configured: data parallel over all {jax.device_count()} "
                      "devices (set mesh.fsdp / mesh.tensor to shard the weights)")
        elif not multiprocess() and _wants_processes(cfg):
            log.warning("the distributed settings ask for several processes but JAX runs in one: call "
                        "sspo_jax.parallel.initialize(cfg.distributed) before any JAX computation (sspo-jax train "
                        "does); training on this process's devices alone")
        self.mesh = make_mesh(mesh_cfg) if mesh_cfg is not None else None
        if multiprocess():
            if cfg.data.batch_size % self.procs:
                raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be a multiple of the {self.procs} "
                                  "processes: each process takes data.batch_size / processes prompts of every batch")
            check_row_split(self.mesh, cfg.rows, alg.group_size)
        place = sharding_for(self.mesh) if self.mesh is not None else None  # weights go straight to their shards
        policy = from_pretrained(model_dir, dtype=dtype, compute_dtype=compute, remat=cfg.model.remat,
                                 sharding_for=place)
        self.model_config = policy.config
        vocab = policy.config.vocab_size
        tok_vocab = len(self.tokenizer)
        if tok_vocab > vocab:
            raise ConfigError(f"the tokenizer has {tok_vocab} ids but the model's vocab_size is {vocab}: "
                              "the tokenizer does not belong to this model")
        policy_gd, params = nnx.split(policy)

        critic_gd = critic_params = None
        if alg.critic != "none":
            critic_cls = TokenValueModel if alg.critic == "token" else PromptCritic
            critic_dir = resolve_model_path(cfg.model.critic_path) if cfg.model.critic_path else model_dir
            critic = critic_cls.from_policy_checkpoint(critic_dir, seed=cfg.train.seed, dtype=dtype,
                                                       compute_dtype=compute, remat=cfg.model.remat,
                                                       head_init_std=cfg.model.critic_head_init_std,
                                                       sharding_for=place)
            critic_gd, critic_params = nnx.split(critic)
        self.models = Models(policy=policy_gd, critic=critic_gd, critic_kind=alg.critic)

        eos = tuple(cfg.sampling.eos_token_ids) or tuple(
            i for i in {self.tokenizer.eos_token_id, *_as_tuple(policy.config.eos_token_id)} if i is not None)
        if not eos:
            raise ConfigError("no stop token: set sampling.eos_token_ids (the tokenizer has no eos_token_id)")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos[0]
        self.sampling = cfg.sampling.replace(eos_token_ids=eos, pad_token_id=int(pad))
        self.eval_sampling = self.sampling.replace(temperature=0.0)

        updates_per_step = alg.ppo_epochs * alg.num_minibatches
        self.updates_per_step = updates_per_step
        total_updates = cfg.train.steps * updates_per_step
        self.policy_tx = optim.make_optimizer(cfg.optim, total_updates)
        self.lr_schedule = optim.learning_rate_schedule(cfg.optim, total_updates)
        self.critic_tx = optim.make_optimizer(cfg.optim, total_updates, critic=True) if critic_gd is not None else None
        opt_state = self.policy_tx.init(params)
        critic_opt = self.critic_tx.init(critic_params) if critic_params is not None else None
        if self.mesh is not None:  # optimizer state follows its parameters
            opt_state = shard_like(opt_state, params, self.mesh)
            critic_opt = shard_like(critic_opt, critic_params, self.mesh) if critic_opt is not None else None
        self.state = TrainState(
            step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(cfg.train.seed)),
            params=params, opt_state=opt_state, critic_params=critic_params, critic_opt_state=critic_opt,
            ref_params=jax.tree.map(jnp.copy, params) if alg.kl_beta > 0 else None)
        if self.mesh is not None:  # scalars live on every device of the mesh, like the parameters
            self.state = self.state.replace(step=jax.device_put(self.state.step, replicated(self.mesh)),
                                            rng=jax.device_put(self.state.rng, replicated(self.mesh)))

        self.table = build_delimiter_table(self.tokenizer, alg.segmentation, vocab_size=vocab)
        self.batcher = PromptBatcher(build_source(cfg.data), self.tokenizer, cfg.data)
        self.eval_batches = self._build_eval_batches()
        temp = self.sampling.temperature
        micro = cfg.micro_batch_size
        self.stats_fn = make_stats_fn(self.models, alg, cfg.model.logprob_chunk_size, micro, temperature=temp)
        loss_alg = alg
        if alg.loss_agg_mode == "seq-mean-token-sum-norm" and alg.loss_norm_constant is None:
            # Dr. GRPO divides by the maximum generation length (ALGORITHMS.md 4), not by the row
            # width (prompt bucket + max_new_tokens), which would change with the prompt bucket.
            loss_alg = alg.replace(loss_norm_constant=float(self.sampling.max_new_tokens))
        self.update_fn = make_update_fn(self.models, loss_alg, self.policy_tx, self.critic_tx,
                                        chunk_size=cfg.model.logprob_chunk_size, micro_rows=micro, temperature=temp)
        seg_cfg = alg.segmentation
        self.segment_fn = jax.jit(lambda tokens, mask: segment_ids(tokens, mask, self.table, seg_cfg))
        self.writer: MetricsWriter | None = None
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", keep=cfg.checkpoint.keep) \
            if cfg.checkpoint.enabled else None
        if self.checkpointer is not None:
            check_disk_space(self.run_dir, sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self.state)),
                             cfg.checkpoint.keep)
        self.eval_history: list[dict[str, Any]] = []
        self.start_step = 0
        if resume:
            self.restore(resume_step)

    # ---- setup helpers ------------------------------------------------------------------------

    def _build_eval_batches(self) -> list[PromptBatch]:
        cfg = self.cfg
        if not cfg.eval.enabled:
            return []
        data = eval_data_config(cfg.data, size=cfg.eval.size, batch_size=cfg.eval.batch_size, path=cfg.eval.path)
        return build_eval_batches(data, self.tokenizer, cfg.eval.size) if data is not None else []

    def _meta(self, step: int) -> dict[str, Any]:
        return {"step": step, "data_cursor": self.batcher.state(), "config": config_to_mapping(self.cfg),
                "model_config": dataclasses.asdict(self.model_config), "eval_history": self.eval_history}

    def _check_meta(self, meta: dict[str, Any]) -> None:
        saved = meta.get("model_config")
        here = json.loads(json.dumps(dataclasses.asdict(self.model_config)))
        if saved is not None and saved != here:
            diff = sorted(k for k in set(saved) | set(here) if saved.get(k) != here.get(k))
            raise ConfigError(f"run directory {str(self.run_dir)!r} holds checkpoints of a different model "
                              f"(differs in {diff}); use a new --run-dir or the original model.path")

    def restore(self, step: Optional[int] = None) -> Optional[int]:
        """Restores the checkpoint of `step` (None = the newest readable one); returns its step."""
        if self.checkpointer is None:
            return None
        where = self.checkpointer.directory
        if step is None:
            found = self.checkpointer.restore_latest(self.state, check_meta=self._check_meta)
            if found is None:
                if self.checkpointer.steps():  # never silently start afresh over a run's checkpoints
                    raise ConfigError(f"every checkpoint in {where} {self.checkpointer.steps()} is unreadable or "
                                      "corrupt (see the warnings above); move that directory away to train from "
                                      "scratch, or use a new --run-dir")
                return None
            step, state, meta = found
        else:
            if step not in self.checkpointer.steps():
                raise ConfigError(f"no checkpoint of step {step} in {where}; available: {self.checkpointer.steps()}")
            try:
                self._check_meta(self.checkpointer.read_meta(step))  # a different model fails here, not in Orbax
                state, meta = self.checkpointer.restore(step, self.state)
            except ConfigError:
                raise
            except Exception as err:  # noqa: BLE001 - unreadable or corrupt: a user-facing error naming it
                msg = " ".join(str(err).split())[:300]
                raise ConfigError(f"checkpoint {where}/{step} is unreadable or corrupt ({msg}); choose another "
                                  f"step of {self.checkpointer.steps()}") from None
        self.state = state
        self.batcher.restore(meta["data_cursor"])
        self.eval_history = list(meta.get("eval_history", []))
        self.start_step = step
        self.echo(f"resumed from {self.checkpointer.directory}/{step} (step {step} of {self.cfg.train.steps})")
        return step

    # ---- one rollout --------------------------------------------------------------------------

    def _rows(self, x: np.ndarray) -> jax.Array:
        """This process's rows [n, ...] (all rows in a single process) as the global array
        [n * processes, ...] on device: split over the mesh's (data, fsdp) axes when there is one."""
        if self.mesh is None:
            return jnp.asarray(x)
        return from_local_rows(x, self.mesh, np.shape(x)[0] * self.procs)

    def _all_rows(self, x: np.ndarray) -> np.ndarray:
        """Every process's rows of a per-process host array [n, ...], as one host array
        [n * processes, ...] in global row order (`x` itself in a single process)."""
        return gather_local_rows(x, self.mesh, np.shape(x)[0] * self.procs)

    def _generate_and_score(self, batch: PromptBatch, key: jax.Array) -> _Rollout:
        """Samples the global `batch` (every process passes the same one) and scores this process's rows."""
        gen: GenerationResult = generate((self.models.policy, self.state.params), batch.input_ids,
                                         batch.attention_mask, self.sampling, key, mesh=self.mesh,
                                         replicate_outputs=False)
        if multiprocess():  # decode and verify only the rows this process's devices hold
            gen = jax.tree.map(local_rows, gen)
            batch = batch.select(process_rows(self.mesh, len(batch.golds)))
        return self._score(gen, batch)

    def _score(self, gen: GenerationResult, batch: PromptBatch) -> _Rollout:
        cfg, alg = self.cfg, self.cfg.algorithm
        tokens = np.asarray(gen.tokens)
        rmask = np.asarray(gen.response_mask)
        lengths = np.asarray(gen.response_lengths)
        truncated = np.asarray(gen.truncated)
        texts = decode_responses(self.tokenizer, gen)
        combined = compute_rewards(texts, batch.golds, cfg.rewards, metas=batch.metas, response_lengths=lengths,
                                   truncated=truncated)
        rewards = combined.total.astype(np.float32)
        metrics = combined.metrics()
        if alg.overlong_buffer_frac is not None:
            n = self.sampling.max_new_tokens
            cache = max(1, int(round(alg.overlong_buffer_frac * n)))
            pen = overlong_penalty(lengths, n, cache) * alg.overlong_penalty_factor
            rewards = rewards + pen
            metrics["reward/overlong_penalty_mean"] = float(np.mean(pen))
        if cfg.eval.reward in combined.per_function:
            correct = combined.per_function[cfg.eval.reward].scores
        else:
            correct = correctness(cfg.eval.reward, texts, batch, gen, cfg.rewards)
        return _Rollout(tokens=tokens, attention_mask=np.asarray(gen.attention_mask), response_mask=rmask,
                        sampler_logp=np.asarray(gen.sampler_logp), prompt_width=gen.prompt_len, rewards=rewards,
                        correct=np.asarray(correct, np.float32), lengths=lengths, truncated=truncated,
                        reward_metrics=metrics)

    def _collect(self, key: jax.Array) -> tuple[_Rollout, dict[str, float]]:
        """This process's scored rows of one batch; DAPO's dynamic sampling keeps groups with reward
        variance (each process fills its own share of the batch; rounds run until every process has)."""
        cfg, alg = self.cfg, self.cfg.algorithm
        g = alg.group_size
        if not alg.dynamic_sampling:
            roll = self._generate_and_score(self.batcher.next_batch(), key)
            return roll, {}
        need = cfg.data.batch_size // self.procs
        kept: list[_Rollout] = []
        dropped: list[_Rollout] = []
        n_kept = rounds = 0
        while rounds < alg.max_sampling_rounds and not all_processes(n_kept >= need):
            roll = self._generate_and_score(self.batcher.next_batch(), jax.random.fold_in(key, rounds))
            rounds += 1
            r = roll.rewards.reshape(-1, g)
            varied = np.flatnonzero(r.max(axis=1) != r.min(axis=1))
            flat = lambda groups: (groups[:, None] * g + np.arange(g)).ravel()  # noqa: E731
            take = varied[:need - n_kept]
            if take.size:
                kept.append(roll.rows(flat(take)))
                n_kept += take.size
            rest = np.setdiff1d(np.arange(r.shape[0]), take)
            if rest.size:
                dropped.append(roll.rows(flat(rest)))
        filler = 0
        if n_kept < need:  # the cap was reached: fill with masked-out groups (they train on nothing)
            pool = _concat(dropped)
            filler = need - n_kept
            pad = pool.rows(np.arange(filler * g))
            pad = dataclasses.replace(pad, response_mask=np.zeros_like(pad.response_mask))
            kept.append(pad)
        roll = _concat(kept)
        width = int(per_process(np.asarray(roll.prompt_width)).max())  # one global array width
        roll = roll.widen(width) if width > roll.prompt_width else roll
        counts = reduce_metrics({"dynamic_sampling/kept_groups": float(n_kept),
                                 "dynamic_sampling/filler_groups": float(filler)}, sum_suffixes=("_groups",))
        return roll, {"dynamic_sampling/rounds": float(rounds), **counts}

    def _prepare(self, roll: _Rollout) -> tuple[RolloutBatch, dict[str, float]]:
        """Device statistics, segments and advantages: the batch the update trains on."""
        alg = self.cfg.algorithm
        response_mask = roll.response_mask.copy()
        if alg.mask_truncated:
            response_mask[roll.truncated] = False
        n_local, t = roll.tokens.shape
        n = n_local * self.procs  # global rows
        tokens, attn, rmask = self._rows(roll.tokens), self._rows(roll.attention_mask), self._rows(response_mask)
        last_prompt = self._rows(np.full((n_local,), roll.prompt_width - 1, np.int32))
        stats = self.stats_fn(self.state, tokens, attn, last_prompt)
        old_logp, entropy = stats["old_logp"], stats["entropy"]
        seg = self.segment_fn(tokens, rmask)
        rewards = self._rows(roll.rewards)
        zeros = self._rows(np.zeros((n_local, t), np.float32))
        returns = old_values = zeros
        metrics: dict[str, float] = {}
        if alg.advantage == "group_zscore":
            a, zero_frac = adv_lib.group_zscore(rewards, alg.group_size, eps=alg.adv_eps)
            metrics["zero_variance_group_frac"] = float(zero_frac)
            advantages = jnp.broadcast_to(a[:, None], (n, t))
        elif alg.advantage in ("group_mean", "rloo"):
            fn = adv_lib.group_mean if alg.advantage == "group_mean" else adv_lib.rloo
            a = fn(rewards, alg.group_size)
            g = self._all_rows(roll.rewards).reshape(-1, alg.group_size)
            metrics["zero_variance_group_frac"] = float(np.mean(g.max(1) == g.min(1)))
            advantages = jnp.broadcast_to(a[:, None], (n, t))
        elif alg.advantage == "gae":
            old_values = stats["critic"]
            a, returns = adv_lib.gae(adv_lib.outcome_token_rewards(rewards, rmask), old_values, rmask,
                                     gamma=alg.gae_gamma, lam=alg.gae_lambda)
            advantages = adv_lib.whiten(a, rmask) if alg.whiten_advantages else a
            metrics["value_mean"] = float(jnp.sum(old_values * rmask) / jnp.maximum(jnp.sum(rmask), 1))
        else:  # sequence_baseline (SPPO)
            z = stats["critic"]
            a = adv_lib.sequence_baseline(rewards, z)
            advantages = jnp.broadcast_to(a[:, None], (n, t))
            metrics["critic_value_mean"] = float(jnp.mean(jax.nn.sigmoid(z)))
        valid = gather(rmask)  # host metrics over the global batch (every process computes the same)
        adv_np = gather(advantages)[valid] if valid.any() else np.zeros(1)
        drift = np.abs(gather(old_logp) - self._all_rows(roll.sampler_logp))[valid] if valid.any() else np.zeros(1)
        metrics.update({
            "advantage/mean": float(adv_np.mean()), "advantage/std": float(adv_np.std()),
            "advantage/min": float(adv_np.min()), "advantage/max": float(adv_np.max()),
            "sampler_logp_abs_diff": float(drift.mean()), "sampler_logp_abs_diff_max": float(drift.max()),
            "old_entropy_mean": float(gather(entropy)[valid].mean()) if valid.any() else 0.0,
        })
        batch = RolloutBatch(
            tokens=tokens, attention_mask=attn, response_mask=rmask, old_logp=old_logp, entropy=entropy,
            ref_logp=stats.get("ref_logp", zeros), segment_ids=seg, advantages=advantages.astype(jnp.float32),
            returns=returns, old_values=old_values, rewards=rewards, last_prompt_index=last_prompt,
            entropy_stats=segment_entropy_stats(entropy, rmask, seg))
        return batch, metrics

    # ---- evaluation ---------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Greedy held-out accuracy (and pass@k with ``eval.samples`` sampled responses)."""
        cfg = self.cfg
        return evaluate_policy((self.models.policy, self.state.params), self.tokenizer, self.eval_batches,
                               self.sampling, cfg.rewards, reward_name=cfg.eval.reward, samples=cfg.eval.samples,
                               seed=cfg.train.seed + 7)

    # ---- the loop -----------------------------------------------------------------------------

    def step(self, step: int) -> dict[str, float]:
        """One RL iteration; returns its metrics (host floats)."""
        t0 = time.perf_counter()
        key, _ = jax.random.split(jax.random.fold_in(self.state.key, 17))
        roll, ds_metrics = self._collect(key)
        t1 = time.perf_counter()
        batch, prep_metrics = self._prepare(roll)
        jax.block_until_ready(batch.old_logp)
        t2 = time.perf_counter()
        self.state, upd = self.update_fn(self.state, batch)
        upd = {k: float(v) for k, v in upd.items()}
        t3 = time.perf_counter()
        reward_metrics = reduce_metrics(roll.reward_metrics, sum_suffixes=("failures", "timeouts", "no_answer"))
        if multiprocess():  # per-row host values of every process (small [N] arrays)
            roll = dataclasses.replace(roll, rewards=self._all_rows(roll.rewards), correct=self._all_rows(roll.correct),
                                       lengths=self._all_rows(roll.lengths), truncated=self._all_rows(roll.truncated),
                                       response_mask=self._all_rows(roll.response_mask))
        valid = roll.response_mask.any(axis=1)
        n_tokens = int(roll.response_mask.sum())
        metrics = {
            **{f"policy/{k}": v for k, v in upd.items() if k not in ("skipped", "updates")},
            "skipped_updates": upd["skipped"], "updates": upd["updates"],
            **reward_metrics, **ds_metrics, **prep_metrics,
            "reward/mean": float(roll.rewards[valid].mean()) if valid.any() else 0.0,
            "reward/std": float(roll.rewards[valid].std()) if valid.any() else 0.0,
            "accuracy": float(roll.correct[valid].mean()) if valid.any() else 0.0,
            "response_length/mean": float(roll.lengths.mean()), "response_length/max": float(roll.lengths.max()),
            "truncated_frac": float(roll.truncated.mean()),
            "lr": float(self.lr_schedule(step * self.updates_per_step)),
            "time/generate_and_score": t1 - t0, "time/stats": t2 - t1, "time/update": t3 - t2,
            "time/step": t3 - t0, "tokens_per_s": n_tokens / max(t3 - t0, 1e-9),
        }
        return metrics

    def save(self, step: int) -> None:
        """Checkpoints the state and metadata of `step` (all processes take part); a failed write
        is a `TrainingError` saying how to recover."""
        if self.checkpointer is None:
            return
        try:
            self.checkpointer.save(step, self.state, self._meta(step))
        except Exception as err:  # noqa: BLE001 - disk full, lost mount, permissions: stop with a clear error
            msg = " ".join(str(err).split())
            full = "No space left on device" in msg or "os_error_code='28'" in msg
            msg = "the disk is full: No space left on device" if full else msg[:400]
            raise TrainingError(f"cannot write the checkpoint of step {step} to {self.checkpointer.directory} "
                                f"({msg}); free disk space (or fix the directory) and run the same command again: "
                                "training resumes from the newest complete checkpoint") from err

    def run(self) -> dict[str, Any]:
        """Trains up to ``train.steps`` iterations; returns (and writes) a summary."""
        cfg = self.cfg
        if self.main:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_mapping(cfg), sort_keys=False))
        self.writer = MetricsWriter(self.run_dir, tensorboard=cfg.logging.tensorboard, enabled=self.main)
        self.writer.truncate_after(self.start_step)  # steps replayed after a crash are logged once
        t_start = time.perf_counter()
        if self.start_step == 0 and self.eval_batches and not self.eval_history:
            before = self.evaluate()
            self.eval_history.append({"step": 0, **before})
            self.writer.write(0, before)
            self.echo(f"held-out accuracy before training: {before['eval/accuracy']:.3f}")
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.train.steps, initial=self.start_step, desc="train", dynamic_ncols=True)
        consecutive_skips = 0
        step = self.start_step
        try:
            for step in range(self.start_step + 1, cfg.train.steps + 1):
                metrics = self.step(step)
                consecutive_skips = consecutive_skips + 1 if metrics["skipped_updates"] >= metrics["updates"] else 0
                metrics["consecutive_skipped_steps"] = float(consecutive_skips)
                if self.eval_batches and cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.train.steps:
                    ev = self.evaluate()
                    self.eval_history.append({"step": step, **ev})
                    metrics.update(ev)
                if step == cfg.train.steps and self.eval_batches:
                    ev = self.evaluate()
                    self.eval_history.append({"step": step, **ev})
                    metrics.update(ev)
                self.writer.write(step, metrics)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", acc=f"{metrics['accuracy']:.2f}",
                                    clip=f"{metrics.get('policy/clip_frac_low', 0) + metrics.get('policy/clip_frac_high', 0):.3f}",
                                    len=f"{metrics['response_length/mean']:.0f}")
                if consecutive_skips >= cfg.train.max_consecutive_skips:
                    self.save(step)
                    raise TrainingError(
                        f"{consecutive_skips} consecutive steps had non-finite losses or gradients (step {step}); "
                        "stopping. Lower optim.lr, check the data, or raise train.max_consecutive_skips")
                if self.checkpointer is not None and (step % cfg.checkpoint.every == 0 or step == cfg.train.steps):
                    self.save(step)
        finally:
            if bar is not None:
                bar.close()
            self.writer.close()
        summary = self._summary(time.perf_counter() - t_start)
        if self.main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _summary(self, wall_s: float) -> dict[str, Any]:
        hist = self.eval_history
        out: dict[str, Any] = {"run_dir": str(self.run_dir), "steps": self.cfg.train.steps,
                               "algorithm": self.cfg.algorithm.name, "wall_time_s": wall_s}
        if hist:
            out["accuracy_before"] = hist[0].get("eval/accuracy")
            out["accuracy_after"] = hist[-1].get("eval/accuracy")
            if "eval/sampled_accuracy" in hist[0]:
                out["sampled_accuracy_before"] = hist[0]["eval/sampled_accuracy"]
                out["sampled_accuracy_after"] = hist[-1].get("eval/sampled_accuracy")
            out["eval_history"] = hist
        return out

    def close(self) -> None:
        """Releases the checkpointer (call when done with the trainer)."""
        if self.checkpointer is not None:
            self.checkpointer.close()


def _wants_processes(cfg: TrainConfig) -> bool:
    """True when the config or the environment asks for a multi-process job."""
    try:
        return resolve(cfg.distributed) is not None
    except ConfigError:
        return True


def _as_tuple(x) -> tuple:
    if x is None:
        return ()
    if isinstance(x, (list, tuple)):
        return tuple(x)
    return (x,)


def train(cfg: TrainConfig, run_dir: str | Path | None = None, **kwargs) -> dict[str, Any]:
    """Builds a `Trainer` and runs it; returns the summary."""
    trainer = Trainer(cfg, run_dir, **kwargs)
    try:
        return trainer.run()
    finally:
        trainer.close()
