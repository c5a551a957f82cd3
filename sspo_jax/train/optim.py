"""Optax optimizers: AdamW with linear warmup then constant / cosine / linear decay, and
global-norm gradient clipping."""

from __future__ import annotations

import optax

from sspo_jax.train.config import OptimConfig


def learning_rate_schedule(cfg: OptimConfig, total_updates: int, peak: float | None = None) -> optax.Schedule:
    """lr(u) of optimizer update u = 0, 1, ...: linear warmup, then constant or decay.

    With ``W = min(cfg.warmup_steps, total_updates - 1)``: ``lr(u) = peak * u / W`` for u < W,
    then ``cfg.schedule`` over the remaining ``total_updates - W`` updates: ``constant`` peak,
    or ``cosine``/``linear`` decay from peak to ``peak * cfg.min_lr_ratio``.

    Args:
      cfg: schedule, warmup_steps, min_lr_ratio, lr.
      total_updates: optimizer updates of the whole run.
      peak: the peak learning rate; None = ``cfg.lr``.
    Returns:
      An `optax.Schedule` (update count -> learning rate).
    """
    peak = cfg.lr if peak is None else peak
    warmup = min(cfg.warmup_steps, max(total_updates - 1, 0))
    decay_steps = max(total_updates - warmup, 1)
    end = peak * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        after = optax.constant_schedule(peak)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.min_lr_ratio)
    else:
        after = optax.linear_schedule(peak, end, decay_steps)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(cfg: OptimConfig, total_updates: int, *, critic: bool = False) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay) after global-norm clipping (``cfg.max_grad_norm``).

    Args:
      cfg: optimizer settings.
      total_updates: optimizer updates of the whole run (for the schedule).
      critic: use ``cfg.critic_lr`` as the peak learning rate instead of ``cfg.lr``.
    Returns:
      An `optax.GradientTransformation`.
    """
    schedule = learning_rate_schedule(cfg, total_updates, cfg.critic_lr if critic else cfg.lr)
    parts = []
    if cfg.max_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay))
    return optax.chain(*parts)
