"""Optax optimizers: AdamW with linear warmup then constant / cosine / linear decay, global-norm
gradient clipping, and optimizer moments in an explicit dtype (``optim.moment_dtype``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
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


def with_moment_dtype(inner: optax.GradientTransformation, moment_dtype) -> optax.GradientTransformation:
    """`inner` run in `moment_dtype`: its state (Adam's moments) is held in that dtype whatever the
    parameter dtype, and the updates it returns have each parameter's own dtype.

    The gradients and parameters are cast to `moment_dtype` before `inner` sees them; `inner`'s
    updates are cast back to the dtype of the parameter they belong to. With `moment_dtype` None
    each leaf keeps its parameter's dtype (the state follows the parameters, the gradients are cast
    to them).

    Args:
      inner: the transformation (e.g. `optax.adamw`); it must create its state from `params`.
      moment_dtype: a dtype (``jnp.float32``, ``jnp.bfloat16``, ...) or None.
    Returns:
      An `optax.GradientTransformation` whose ``update`` needs `params`.
    """

    def to_moment(tree, like):
        if moment_dtype is None:
            return jax.tree.map(lambda x, p: x.astype(p.dtype), tree, like)
        return jax.tree.map(lambda x: x.astype(moment_dtype), tree)

    def init(params):
        return inner.init(to_moment(params, params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("with_moment_dtype needs params in update() (the updates take each parameter's dtype)")
        out, state = inner.update(to_moment(updates, params), state, to_moment(params, params))
        return jax.tree.map(lambda u, p: u.astype(p.dtype), out, params), state

    return optax.GradientTransformation(init, update)


def moment_dtype(cfg: OptimConfig):
    """The dtype of the optimizer moments: ``cfg.moment_dtype`` as a jnp dtype, None = the parameters'."""
    return None if cfg.moment_dtype is None else jnp.dtype(cfg.moment_dtype)


def make_optimizer(cfg: OptimConfig, total_updates: int, *, critic: bool = False) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay) after global-norm clipping (``cfg.max_grad_norm``).

    The clipping sees the gradients as given (the update step accumulates them in fp32); AdamW
    runs in ``cfg.moment_dtype`` (`with_moment_dtype`: its moments are stored in that dtype, e.g.
    fp32 moments over bf16 parameters), and the updates are cast to each parameter's dtype.

    Args:
      cfg: optimizer settings.
      total_updates: optimizer updates of the whole run (for the schedule).
      critic: use ``cfg.critic_lr`` as the peak learning rate instead of ``cfg.lr``.
    Returns:
      An `optax.GradientTransformation` (its ``update`` needs the parameters).
    """
    schedule = learning_rate_schedule(cfg, total_updates, cfg.critic_lr if critic else cfg.lr)
    parts = []
    if cfg.max_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    parts.append(with_moment_dtype(adamw, moment_dtype(cfg)))
    return optax.chain(*parts)


def schedule_count(opt_state) -> int | None:
    """The update count of the learning-rate schedule in an optimizer state of `make_optimizer`:
    the next update uses ``lr(count)`` (optax's ``ScaleByScheduleState``, which an update that
    the non-finite guard skips, or a critic warm-up step, leaves unchanged); None when the state
    has no schedule.

    Args:
      opt_state: the optimizer state (host or device arrays; read once, as a Python int).
    """
    leaves = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
    for leaf in leaves:
        if isinstance(leaf, optax.ScaleByScheduleState):
            return int(leaf.count)
    return None
