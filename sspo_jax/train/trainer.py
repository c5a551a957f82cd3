"""The RL loop as a short driver over one function per stage (sspo_jax/train/*):

    collect (sample.sample_rollout -> score.score_rollout, DAPO's dynamic sampling in collect.py)
      -> prepare.prepare_batch (token stats, subsentence ids, advantages)
      -> step.make_update_fn (epochs x minibatches x micro-batches, Optax)
      -> metrics (JSONL, TensorBoard), evaluation, Orbax checkpoints (auto-resume, resume.py)

    trainer = Trainer(load_config("configs/tiny_sspo.yaml"))
    summary = trainer.run()            # resumes from RUN_DIR/checkpoints when present

Every device computation is jitted once per shape (prompt widths are bucketed); the host does
what is inherently host work: reading prompts, decoding responses, verifying answers. Building
the run (checks, tokenizer, models, optimizers, initial state) is `build.build_run`.

Multi-host (several processes, `sspo_jax.parallel.initialize` called first): every process reads
every global prompt batch (the data cursor stays identical everywhere), samples, decodes and
scores the rows its devices hold; metrics are reduced over all processes. Only process 0 writes
the run directory's files (config, metrics, TensorBoard, summary) and prints; Orbax checkpoints
are written by all processes together.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import numpy as np
import yaml

from sspo_jax.algorithms import segment_ids
from sspo_jax.data import PromptBatch, PromptBatcher, build_source
from sspo_jax.errors import CheckpointError, TrainingError, one_line
from sspo_jax.parallel import is_main_process, multiprocess
from sspo_jax.parallel.host_data import all_processes, reduce_metrics
from sspo_jax.train import collect, metric_names as M, prepare, sample, score
from sspo_jax.train import resume as resume_mod
from sspo_jax.train.build import build_run, check_disk_space, state_bytes
from sspo_jax.train.checkpoint import Checkpointer
from sspo_jax.train.config import TrainConfig, config_to_mapping, load_config
from sspo_jax.train.evaluate import build_eval_batches, eval_data_config, evaluate_policy
from sspo_jax.train.logging_io import MetricsWriter
from sspo_jax.train.records import ScoredRollout
from sspo_jax.train.run_lock import maybe_acquire_run_lock
from sspo_jax.train.shaping import loss_config, overlong_shaping
from sspo_jax.train.step import ONPOLICY_BATCH_METRICS, make_stats_fn, make_update_fn, needs_policy_stats


class TrainingStopped(TrainingError):
    """Training was stopped by SIGTERM or SIGINT (Ctrl-C) after a finished step, which was checkpointed.

    Attributes:
      signum: the signal's number (the CLI exits with 128 + signum).
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class _StopRequest:
    """SIGTERM / SIGINT handlers for the training loop: the first signal asks the loop to stop after
    the step it is in (which is then checkpointed); the handlers are then put back, so a second
    signal acts at once (SIGTERM terminates, Ctrl-C raises KeyboardInterrupt). Only on the main thread."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say, self.signum, self._previous = say, None, {}

    @property
    def signal_name(self) -> Optional[str]:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self.uninstall()
        self.say(f"{signal.Signals(signum).name} received: finishing the current step, then saving a checkpoint "
                 "and stopping (send it again to stop at once)")

    def agree(self) -> None:
        """Multi-process jobs: a stop asked of any process is a stop for all (a collective)."""
        if not all_processes(self.signum is None) and self.signum is None:
            self.signum = signal.SIGTERM

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


def check_reward_range(cfg: TrainConfig, rewards: Any, step: int) -> None:
    """SPPO's prompt critic is trained with a binary cross-entropy on the rewards, which has no
    minimum outside [0, 1]: a `TrainingError` when a step's rewards leave that range."""
    if cfg.algorithm.critic != "prompt" or not len(rewards):
        return
    low, high = float(np.min(rewards)), float(np.max(rewards))
    if low < 0 or high > 1 or not (np.isfinite(low) and np.isfinite(high)):
        raise TrainingError(f"step {step}: rewards range over [{low:g}, {high:g}], but {cfg.algorithm.name}'s prompt "
                            "critic (a binary cross-entropy on the reward) needs rewards in [0, 1]: use rewards "
                            "scored in [0, 1] with non-negative weights summing to at most 1")


class Trainer:
    """Builds everything from a `TrainConfig` and runs the RL loop.

    Args:
      cfg: the job.
      run_dir: overrides ``cfg.run_dir``.
      progress: show a progress bar (default ``cfg.logging.progress``).
      echo: where human-readable lines go (default `print`).
      resume: restore a checkpoint found in ``RUN_DIR/checkpoints`` (the newest, or `resume_step`).
      resume_step: the checkpoint step to resume from (None = the newest readable one).
      allow_config_change: config keys (or sections) that may differ from the resumed checkpoint's
        config although they are not in `resume.SAFE_TO_CHANGE` (``--allow-config-change``); every
        change is recorded in ``RUN_DIR/config_changes.jsonl``.

    The trainer holds an exclusive lock on the run directory (`run_lock`, process 0) from here
    until `close` (or the process's end): a second trainer on the same directory fails at once.
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | Path | None = None, *, progress: Optional[bool] = None,
                 echo: Callable[[str], None] = print, resume: bool = True, resume_step: Optional[int] = None,
                 allow_config_change: tuple[str, ...] | list[str] = ()) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir or cfg.run_dir)
        self.main = is_main_process()  # process 0 (or the only one) prints and writes the run's files
        self.echo = echo if self.main else (lambda s: None)
        self.progress = (cfg.logging.progress if progress is None else progress) and self.main
        self.allow_config_change = tuple(allow_config_change)
        resume_mod.check_allowed_keys(cfg, self.allow_config_change)
        self.config_changes: list[resume_mod.ConfigChange] = []
        self.checkpointer: Checkpointer | None = None
        self._lock = maybe_acquire_run_lock(self.run_dir, self.main)
        try:
            self._build(resume, resume_step)
        except BaseException:
            self.close()
            raise

    def _build(self, resume: bool, resume_step: Optional[int]) -> None:
        cfg = self.cfg
        parts = build_run(cfg, self.run_dir, echo=self.echo)
        self.model_dir, self.tokenizer, self.model_config = parts.model_dir, parts.tokenizer, parts.model_config
        self.models, self.sampling, self.mesh, self.rows = parts.models, parts.sampling, parts.mesh, parts.rows
        self.state, self.table, self.lr_schedule = parts.state, parts.delimiter_table, parts.lr_schedule
        self.updates_per_step = parts.updates_per_step
        alg, temp, micro = cfg.algorithm, self.sampling.temperature, cfg.micro_batch_size
        max_new = self.sampling.max_new_tokens
        self.batcher = PromptBatcher(build_source(cfg.data), self.tokenizer, cfg.data)
        self.eval_batches = self._build_eval_batches()
        exact = cfg.train.exact_on_policy_ratio
        lean = not needs_policy_stats(alg, exact)  # every update on-policy: no old-log-prob pass
        self.stats_fn = make_stats_fn(self.models, alg, cfg.model.logprob_chunk_size, micro, temperature=temp,
                                      policy_stats=not lean)
        self.update_fn = make_update_fn(self.models, loss_config(alg, max_new), parts.policy_tx, parts.critic_tx,
                                        chunk_size=cfg.model.logprob_chunk_size, micro_rows=micro, temperature=temp,
                                        exact_on_policy_ratio=exact, old_logp_from_sampler=lean)
        table, seg_cfg = self.table, alg.segmentation
        self.segment_fn = jax.jit(lambda tokens, mask: segment_ids(tokens, mask, table, seg_cfg))
        self.writer: MetricsWriter | None = None
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", keep=cfg.checkpoint.keep) \
            if cfg.checkpoint.enabled else None
        if self.checkpointer is not None:
            check_disk_space(self.run_dir, state_bytes(self.state), cfg.checkpoint.keep)
        self.eval_history: list[dict[str, Any]] = []
        self.start_step = 0
        if resume:
            self.restore(resume_step)

    def _build_eval_batches(self) -> list[PromptBatch]:
        cfg = self.cfg
        if not cfg.eval.enabled:
            return []
        data = eval_data_config(cfg.data, size=cfg.eval.size, batch_size=cfg.eval.batch_size, path=cfg.eval.path)
        return build_eval_batches(data, self.tokenizer, cfg.eval.size) if data is not None else []

    def restore(self, step: Optional[int] = None) -> Optional[int]:
        """Restores the checkpoint of `step` (None = the newest readable one); returns its step."""
        if self.checkpointer is None:
            return None
        found = resume_mod.restore_checkpoint(
            self.checkpointer, self.state, self.model_config, self.run_dir, step, cfg=self.cfg,
            allow_config_change=self.allow_config_change,
            details_log=self.run_dir / resume_mod.RESTORE_LOG if self.main else None)
        if found is None:
            return None
        step, self.state, meta = found
        self.batcher.restore(meta["data_cursor"])
        self.eval_history = list(meta.get("eval_history", []))
        self.start_step = step
        self.echo(f"resumed from {self.checkpointer.directory}/{step} (step {step} of {self.cfg.train.steps})")
        self.config_changes = resume_mod.config_changes(meta.get("config"), self.cfg)
        for change in self.config_changes:
            why = "safe to change" if change.safe else "allowed by --allow-config-change"
            self.echo(f"config changed since checkpoint {step}: {change.describe()} ({why}; recorded in "
                      f"{self.run_dir / resume_mod.CHANGES_FILE})")
        return step

    # ---- the stages of one step ---------------------------------------------------------------

    @property
    def scoring(self) -> score.ScoringSpec:
        """How rollouts are scored: ``rewards``, ``eval.reward`` and the algorithm's length shaping."""
        cfg = self.cfg
        return score.ScoringSpec(cfg.rewards, cfg.eval.reward,
                                 overlong_shaping(cfg.algorithm, self.sampling.max_new_tokens))

    def draw(self, key: jax.Array) -> ScoredRollout:
        """Samples and scores the next prompt batch (this process's rows)."""
        rollout, batch = sample.sample_rollout(self.models.policy, self.state.params, self.batcher.next_batch(),
                                               self.sampling, key, mesh=self.mesh)
        return score.score_rollout(rollout, batch, self.tokenizer, self.scoring)

    def collect(self, key: jax.Array) -> tuple[ScoredRollout, dict[str, float]]:
        """This process's scored rows of one batch (DAPO's dynamic sampling when configured)."""
        alg = self.cfg.algorithm
        dynamic = alg.dynamic_sampling
        return collect.collect_batch(lambda r: self.draw(jax.random.fold_in(key, r) if dynamic else key),
                                     need=self.cfg.data.batch_size // self.rows.processes, group_size=alg.group_size,
                                     dynamic=dynamic, max_rounds=alg.max_sampling_rounds)

    def prepare(self, scored: ScoredRollout):
        """The device `RolloutBatch` of `scored` and its host metrics (`prepare.prepare_batch`)."""
        return prepare.prepare_batch(scored, self.state, prepare.PrepareFns(self.stats_fn, self.segment_fn),
                                     self.rows, self.cfg.algorithm)

    def evaluate(self) -> dict[str, float]:
        """Greedy held-out accuracy (and pass@k with ``eval.samples`` sampled responses)."""
        cfg = self.cfg
        return evaluate_policy((self.models.policy, self.state.params), self.tokenizer, self.eval_batches,
                               self.sampling, cfg.rewards, reward_name=cfg.eval.reward, samples=cfg.eval.samples,
                               seed=cfg.train.seed + 7, max_new_tokens=cfg.eval.max_new_tokens)

    def step(self, step: int) -> dict[str, float]:
        """One RL iteration; returns its metrics (host floats)."""
        t0 = time.perf_counter()
        key, _ = jax.random.split(jax.random.fold_in(self.state.key, 17))
        prompts_before = dict(self.batcher.totals)
        roll, ds_metrics = self.collect(key)
        check_reward_range(self.cfg, roll.rewards, step)
        t1 = time.perf_counter()
        batch, prep_metrics = self.prepare(roll)
        jax.block_until_ready(batch.old_logp)
        t2 = time.perf_counter()
        self.state, upd = self.update_fn(self.state, batch)
        upd = {k: float(v) for k, v in upd.items()}
        t3 = time.perf_counter()
        reward_metrics = reduce_metrics(roll.reward_metrics,
                                        sum_suffixes=("failures", "timeouts", "no_answer", "gold_unparsed"))
        # every process reads every global batch: the batcher's counts are already the whole batch's
        data_metrics = {M.PROMPTS_TRUNCATED: float(self.batcher.totals["truncated"] - prompts_before["truncated"]),
                        M.PROMPTS_REJECTED: float(self.batcher.totals["rejected"] - prompts_before["rejected"])}
        if multiprocess():  # per-row host values of every process (small [N] arrays)
            roll = dataclasses.replace(roll, **{k: self.rows.gather(getattr(roll, k)) for k in
                                                ("rewards", "correct", "lengths", "truncated", "response_mask")})
        valid = roll.response_mask.any(axis=1)
        mean = lambda x: float(x[valid].mean()) if valid.any() else 0.0  # noqa: E731
        return {
            **{M.POLICY_PREFIX + k: v for k, v in upd.items()
               if k not in ("skipped", "updates", *ONPOLICY_BATCH_METRICS)},
            **{k: upd[k] for k in ONPOLICY_BATCH_METRICS if k in upd},  # the lean path's drift and entropy
            M.SKIPPED_UPDATES: upd["skipped"], M.UPDATES: upd["updates"],
            **reward_metrics, **ds_metrics, **prep_metrics, **data_metrics,
            M.REWARD_MEAN: mean(roll.rewards), M.REWARD_STD: float(roll.rewards[valid].std()) if valid.any() else 0.0,
            M.ACCURACY: mean(roll.correct),
            M.RESPONSE_LENGTH_MEAN: float(roll.lengths.mean()), M.RESPONSE_LENGTH_MAX: float(roll.lengths.max()),
            M.TRUNCATED_FRAC: float(roll.truncated.mean()),
            M.LR: float(self.lr_schedule(step * self.updates_per_step)),
            M.TIME_GENERATE_AND_SCORE: t1 - t0, M.TIME_STATS: t2 - t1, M.TIME_UPDATE: t3 - t2, M.TIME_STEP: t3 - t0,
            M.TOKENS_PER_S: int(roll.response_mask.sum()) / max(t3 - t0, 1e-9),
        }

    # ---- the loop -----------------------------------------------------------------------------

    def save(self, step: int) -> None:
        """Checkpoints the state and metadata of `step` (all processes take part); a failed write
        is a `TrainingError` saying how to recover."""
        if self.checkpointer is None:
            return
        meta = resume_mod.checkpoint_meta(self.cfg, step, self.batcher.state(), self.model_config, self.eval_history)
        try:
            self.checkpointer.save(step, self.state, meta)
        except Exception as err:  # noqa: BLE001 - disk full, lost mount, permissions: stop with a clear error
            msg = one_line(err)
            full = "No space left on device" in msg or "os_error_code='28'" in msg
            msg = "the disk is full: No space left on device" if full else msg[:400]
            raise TrainingError(f"cannot write the checkpoint of step {step} to {self.checkpointer.directory} "
                                f"({msg}); free disk space (or fix the directory) and run the same command again: "
                                "training resumes from the newest complete checkpoint") from err

    def _timeout_frac(self, metrics: dict[str, Any]) -> float:
        """The largest share of the step's responses whose verification by one reward timed out."""
        scored = self.cfg.rows * max(1.0, metrics.get("dynamic_sampling/rounds", 1.0))
        counts = [v for k, v in metrics.items() if k.startswith("reward/") and k.count("/") == 2
                  and k.endswith("/timeouts")]
        return max(counts, default=0.0) / scored

    def _evaluate_into(self, step: int, metrics: dict[str, Any]) -> None:
        ev = self.evaluate()
        self.eval_history.append({"step": step, **ev})
        metrics.update(ev)

    def run(self) -> dict[str, Any]:
        """Trains up to ``train.steps`` iterations; returns (and writes) a summary."""
        cfg = self.cfg
        if self.main:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_mapping(cfg), sort_keys=False))
            resume_mod.record_config_changes(self.run_dir, self.start_step, self.config_changes)
        self.config_changes = []  # recorded once
        self.writer = MetricsWriter(self.run_dir, tensorboard=cfg.logging.tensorboard, enabled=self.main)
        # steps replayed after a crash are logged once; a start before any checkpoint redoes step 0 too
        self.writer.truncate_after(self.start_step if self.start_step > 0 else -1)
        t_start = time.perf_counter()
        if self.start_step == 0 and self.eval_batches and not self.eval_history:
            before: dict[str, Any] = {}
            self._evaluate_into(0, before)
            self.writer.write(0, before)
            self.echo(f"held-out accuracy before training: {before[M.EVAL_ACCURACY]:.3f}")
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.train.steps, initial=self.start_step, desc="train", dynamic_ncols=True)
        skips = 0
        say = bar.write if bar is not None else self.echo
        stop = _StopRequest(say if self.main else (lambda s: None))
        warned_truncation = False
        try:
            stop.install()
            for step in range(self.start_step + 1, cfg.train.steps + 1):
                metrics = self.step(step)
                skips = skips + 1 if metrics[M.SKIPPED_UPDATES] >= metrics[M.UPDATES] else 0
                metrics[M.CONSECUTIVE_SKIPPED_STEPS] = float(skips)
                last = step == cfg.train.steps
                if self.eval_batches and (last or (cfg.eval.every and step % cfg.eval.every == 0)):
                    self._evaluate_into(step, metrics)
                self.writer.write(step, metrics)
                timeouts = self._timeout_frac(metrics)
                if bar is not None:
                    clip = metrics.get("policy/clip_frac_low", 0) + metrics.get("policy/clip_frac_high", 0)
                    bar.update(1)
                    extra = {"timeouts": f"{timeouts:.0%}"} if timeouts > 0 else {}
                    bar.set_postfix(reward=f"{metrics[M.REWARD_MEAN]:.3f}", acc=f"{metrics[M.ACCURACY]:.2f}",
                                    clip=f"{clip:.3f}", len=f"{metrics[M.RESPONSE_LENGTH_MEAN]:.0f}", **extra)
                if timeouts > cfg.rewards.timeout_warn_frac:
                    say(f"warning: step {step}: {timeouts:.0%} of the responses' verifications timed out (scored 0; "
                        f"rewards.timeout_s={cfg.rewards.timeout_s:g}): raise rewards.timeout_s or check the "
                        "responses and answers (reward/<name>/timeouts)")
                if metrics[M.PROMPTS_TRUNCATED] and not warned_truncation:
                    warned_truncation = True
                    say(f"warning: step {step}: {metrics[M.PROMPTS_TRUNCATED]:.0f} prompt(s) longer than "
                        f"data.max_prompt_len={cfg.data.max_prompt_len} tokens were cut to their last "
                        f"{cfg.data.max_prompt_len} tokens (data.overlong_prompt=truncate); counted in "
                        "data/prompts_truncated, the total in summary.json")
                if skips >= cfg.train.max_consecutive_skips:
                    self.save(step)
                    raise TrainingError(
                        f"{skips} consecutive steps had non-finite losses or gradients (step {step}); "
                        "stopping. Lower optim.lr, check the data, or raise train.max_consecutive_skips")
                saved = self.checkpointer is not None and (step % cfg.checkpoint.every == 0 or last)
                if saved:
                    self.save(step)
                if multiprocess():  # every process stops after the same step (save is collective)
                    stop.agree()
                if stop.signal_name is not None and not last:
                    if self.checkpointer is not None and not saved:
                        self.save(step)
                    where = (f"checkpoint {self.checkpointer.directory}/{step} written; run the same command again "
                             "to resume" if self.checkpointer is not None else "checkpoint.enabled=false: nothing "
                             "was saved")
                    raise TrainingStopped(f"stopped by {stop.signal_name} after step {step} of {cfg.train.steps} "
                                          f"({where})", stop.signum)
        finally:
            stop.uninstall()
            if bar is not None:
                bar.close()
            self.writer.close()
        totals = self.batcher.totals
        if totals["truncated"] or totals["rejected"]:
            self.echo(f"warning: {totals['truncated']} prompt(s) truncated and {totals['rejected']} rejected for being "
                      f"longer than data.max_prompt_len={cfg.data.max_prompt_len} in this run")
        summary = self._summary(time.perf_counter() - t_start)
        if self.main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _summary(self, wall_s: float) -> dict[str, Any]:
        hist = self.eval_history
        out: dict[str, Any] = {"run_dir": str(self.run_dir), "steps": self.cfg.train.steps,
                               "algorithm": self.cfg.algorithm.name, "wall_time_s": wall_s,
                               "prompts_truncated": self.batcher.totals["truncated"],
                               "prompts_rejected": self.batcher.totals["rejected"]}
        changes = resume_mod.read_config_changes(self.run_dir)
        if changes:
            out["config_changes"] = changes
        if hist:
            out["accuracy_before"] = hist[0].get(M.EVAL_ACCURACY)
            out["accuracy_after"] = hist[-1].get(M.EVAL_ACCURACY)
            if M.EVAL_SAMPLED_ACCURACY in hist[0]:
                out["sampled_accuracy_before"] = hist[0][M.EVAL_SAMPLED_ACCURACY]
                out["sampled_accuracy_after"] = hist[-1].get(M.EVAL_SAMPLED_ACCURACY)
            out["eval_history"] = hist
        return out

    def close(self) -> None:
        """Releases the checkpointer and the run directory's lock (call when done with the trainer)."""
        try:
            if self.checkpointer is not None:
                self.checkpointer.close()
        finally:
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.release()


def trainer_for_run(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> Trainer:
    """A `Trainer` resumed from a run's checkpoint (``RUN_DIR`` = the newest, ``RUN_DIR/checkpoints/STEP``),
    with the run's own config: to continue training it or to inspect its full state (optimizer
    state and data cursor included). For inference use `sspo_jax.train.load_run`, which reads far less.

    Raises:
      CheckpointError: the run holds no checkpoint.
    """
    from sspo_jax.train.load_run import split_run_path

    run, step = split_run_path(path)
    cfg = load_config(run / "config.yaml", ["logging.progress=false", "logging.tensorboard=false", *overrides])
    trainer = Trainer(cfg, run, echo=lambda s: None, resume=True, resume_step=step)
    if trainer.start_step == 0:
        trainer.close()
        raise CheckpointError(f"{run} holds no checkpoint to resume from")
    return trainer


def train(cfg: TrainConfig, run_dir: str | Path | None = None, **kwargs) -> dict[str, Any]:
    """Builds a `Trainer` and runs it; returns the summary."""
    trainer = Trainer(cfg, run_dir, **kwargs)
    try:
        return trainer.run()
    finally:
        trainer.close()
