"""The RL loop as a short driver over one function per stage (sspo_jax/train/*):

    collect (sample.sample_rollout -> score.score_rollout, DAPO's dynamic sampling in collect.py)
      -> prepare.prepare_batch (token stats, subsentence ids, advantages)
      -> step.make_update_fn (epochs x minibatches x micro-batches, Optax)
      -> metrics (JSONL, TensorBoard), evaluation, Orbax checkpoints (auto-resume, resume.py)

    trainer = Trainer(load_config("configs/tiny_sspo.yaml"))
    summary = trainer.run()            # resumes from RUN_DIR/checkpoints when present

Building the run is `build.build_run`; docs/architecture.md walks through the stages. Multi-host:
every process reads every global prompt batch, samples and scores the rows its devices hold;
metrics are reduced over all processes; only process 0 writes the run directory's files and
prints, while Orbax checkpoints are written by all processes together.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import yaml

from sspo_jax.algorithms import segment_ids
from sspo_jax.data import PromptBatcher, build_source
from sspo_jax.errors import TrainingError
from sspo_jax.parallel import is_main_process, multiprocess
from sspo_jax.parallel.host_data import reduce_metrics
from sspo_jax.train import collect, metric_names as M, optim, prepare, records, resume as resume_mod, sample, score
from sspo_jax.train.console import StepConsole, run_summary
from sspo_jax.train.build import build_run, check_disk_space, state_bytes
from sspo_jax.train.checkpoint import Checkpointer
from sspo_jax.train.config import TrainConfig, config_to_mapping
from sspo_jax.train.evaluate import eval_batches_for, evaluate_policy
from sspo_jax.train.logging_io import MetricsWriter
from sspo_jax.train.records import ScoredRollout
from sspo_jax.train.run_lock import maybe_acquire_run_lock
from sspo_jax.train.shaping import loss_config, overlong_shaping
from sspo_jax.train.signals import StopRequest
from sspo_jax.train.step import ONPOLICY_BATCH_METRICS, make_stats_fn, make_update_fn, needs_policy_stats


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
        self.eval_batches = eval_batches_for(cfg, self.tokenizer)
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
        resume_mod.announce_changes(self.config_changes, step, self.run_dir, self.echo)
        return step

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
                                     dynamic=dynamic, max_rounds=alg.max_sampling_rounds,
                                     metric=alg.dynamic_sampling_metric)

    def trim(self, scored: ScoredRollout) -> ScoredRollout:
        """`scored` without its all-padding columns (``train.trim_multiple``), by the global batch's bounds."""
        multiple = self.cfg.train.trim_multiple
        if multiple <= 0:
            return scored
        lead, lengths = records.padding_bounds(scored)
        if multiprocess():
            lead, lengths = self.rows.gather(lead), self.rows.gather(lengths)
        return records.trim(scored, multiple, int(lead.min()), int(lengths.max()))

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
        score.check_reward_range(self.cfg, roll.rewards, step)
        roll = self.trim(roll)
        t1 = time.perf_counter()
        batch, prep_metrics = self.prepare(roll)
        jax.block_until_ready(batch.old_logp)
        t2 = time.perf_counter()
        lr_count = optim.schedule_count(self.state.opt_state)  # read before the update donates the state
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
            M.LR: float(self.lr_schedule((step - 1) * self.updates_per_step if lr_count is None else lr_count)),
            M.TIME_GENERATE_AND_SCORE: t1 - t0, M.TIME_STATS: t2 - t1, M.TIME_UPDATE: t3 - t2, M.TIME_STEP: t3 - t0,
            M.TOKENS_PER_S: int(roll.response_mask.sum()) / max(t3 - t0, 1e-9),
        }

    def save(self, step: int) -> None:
        """Checkpoints the state and metadata of `step` (all processes take part); a failed write
        is a `TrainingError` saying how to recover."""
        if self.checkpointer is None:
            return
        meta = resume_mod.checkpoint_meta(self.cfg, step, self.batcher.state(), self.model_config, self.eval_history)
        self.checkpointer.save_or_explain(step, self.state, meta)

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
        console = StepConsole(cfg, self.start_step, progress=self.progress, echo=self.echo)
        skips = 0
        stop = StopRequest(console.say if self.main else (lambda s: None))
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
                console.report(step, metrics)
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
                    stop.raise_stopped(step, cfg.train.steps, self.checkpointer)
        finally:
            stop.uninstall()
            console.close()
            self.writer.close()
        totals = self.batcher.totals
        if totals["truncated"] or totals["rejected"]:
            self.echo(f"warning: {totals['truncated']} prompt(s) truncated and {totals['rejected']} rejected for being "
                      f"longer than data.max_prompt_len={cfg.data.max_prompt_len} in this run")
        summary = run_summary(self.cfg, self.run_dir, time.perf_counter() - t_start, self.eval_history,
                              self.batcher.totals)
        if self.main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

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
    """A `Trainer` resumed from a run's checkpoint, with the run's own config (see
    `resume.resumed_trainer`); for inference use `sspo_jax.train.load_run`, which reads far less."""
    return resume_mod.resumed_trainer(Trainer, path, overrides)


def train(cfg: TrainConfig, run_dir: str | Path | None = None, **kwargs) -> dict[str, Any]:
    """Builds a `Trainer` and runs it; returns the summary."""
    trainer = Trainer(cfg, run_dir, **kwargs)
    try:
        return trainer.run()
    finally:
        trainer.close()
