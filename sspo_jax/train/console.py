"""What a run tells its user: the progress bar, the per-step console warnings (verification
timeouts, truncated prompts) and the summary written to ``RUN_DIR/summary.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from sspo_jax.train import metric_names as M
from sspo_jax.train import resume as resume_mod
from sspo_jax.train.config import TrainConfig


def timeout_frac(metrics: dict[str, Any], rows: int) -> float:
    """The largest share of a step's responses whose verification by one reward timed out."""
    scored = rows * max(1.0, metrics.get("dynamic_sampling/rounds", 1.0))
    counts = [v for k, v in metrics.items() if k.startswith("reward/") and k.count("/") == 2
              and k.endswith("/timeouts")]
    return max(counts, default=0.0) / scored


class StepConsole:
    """The console side of the loop: a tqdm bar (with ``progress``) and one-line warnings.

    Args:
      cfg: the job (thresholds, sizes).
      start_step: the step the bar starts at.
      progress: show the bar.
      echo: where lines go without a bar.
    """

    def __init__(self, cfg: TrainConfig, start_step: int, *, progress: bool, echo: Callable[[str], None]) -> None:
        self.cfg, self.bar, self.warned_truncation = cfg, None, False
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.train.steps, initial=start_step, desc="train", dynamic_ncols=True)
        self.say = self.bar.write if self.bar is not None else echo

    def report(self, step: int, metrics: dict[str, Any]) -> None:
        """Advances the bar with the step's reward, accuracy, clip fraction and length, and warns
        when verifications timed out above ``rewards.timeout_warn_frac`` or prompts were truncated
        (the first time)."""
        cfg = self.cfg
        timeouts = timeout_frac(metrics, cfg.rows)
        if self.bar is not None:
            clip = metrics.get("policy/clip_frac_low", 0) + metrics.get("policy/clip_frac_high", 0)
            self.bar.update(1)
            extra = {"timeouts": f"{timeouts:.0%}"} if timeouts > 0 else {}
            self.bar.set_postfix(reward=f"{metrics[M.REWARD_MEAN]:.3f}", acc=f"{metrics[M.ACCURACY]:.2f}",
                                 clip=f"{clip:.3f}", len=f"{metrics[M.RESPONSE_LENGTH_MEAN]:.0f}", **extra)
        if timeouts > cfg.rewards.timeout_warn_frac:
            self.say(f"warning: step {step}: {timeouts:.0%} of the responses' verifications timed out (scored 0; "
                     f"rewards.timeout_s={cfg.rewards.timeout_s:g}): raise rewards.timeout_s or check the "
                     "responses and answers (reward/<name>/timeouts)")
        if metrics.get(M.PROMPTS_TRUNCATED) and not self.warned_truncation:
            self.warned_truncation = True
            self.say(f"warning: step {step}: {metrics[M.PROMPTS_TRUNCATED]:.0f} prompt(s) longer than "
                     f"data.max_prompt_len={cfg.data.max_prompt_len} tokens were cut to their last "
                     f"{cfg.data.max_prompt_len} tokens (data.overlong_prompt=truncate); counted in "
                     "data/prompts_truncated, the total in summary.json")

    def close(self) -> None:
        """Closes the bar."""
        if self.bar is not None:
            self.bar.close()


def run_summary(cfg: TrainConfig, run_dir: Path, wall_s: float, eval_history: list[dict[str, Any]],
                prompt_totals: dict[str, int]) -> dict[str, Any]:
    """The run's summary: steps, algorithm, wall time, prompt truncation totals, recorded config
    changes, and the held-out accuracies before and after (with the evaluation history)."""
    out: dict[str, Any] = {"run_dir": str(run_dir), "steps": cfg.train.steps, "algorithm": cfg.algorithm.name,
                           "wall_time_s": wall_s, "prompts_truncated": prompt_totals["truncated"],
                           "prompts_rejected": prompt_totals["rejected"]}
    changes = resume_mod.read_config_changes(run_dir)
    if changes:
        out["config_changes"] = changes
    if eval_history:
        first, last = eval_history[0], eval_history[-1]
        out["accuracy_before"] = first.get(M.EVAL_ACCURACY)
        out["accuracy_after"] = last.get(M.EVAL_ACCURACY)
        if M.EVAL_SAMPLED_ACCURACY in first:
            out["sampled_accuracy_before"] = first[M.EVAL_SAMPLED_ACCURACY]
            out["sampled_accuracy_after"] = last.get(M.EVAL_SAMPLED_ACCURACY)
        out["eval_history"] = eval_history
    return out
