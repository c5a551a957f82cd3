"""Loss aggregation as (sum, denominator) pairs (ALGORITHMS.md 6; PITFALLS.md 1, 2).

A loss is never averaged early. Each mode returns ``(loss_sum, denominator)`` such that the loss
of a batch is ``loss_sum / denominator`` and the loss of a batch split into micro-batches or
device shards is ``sum(loss_sums) / sum(denominators)``: exact, because the denominators depend
only on masks, never on parameters. Modes (verl names):

- ``token-mean``: sum over every valid token / number of valid tokens (long responses weigh more).
- ``seq-mean-token-mean``: mean over responses of each response's token mean (GRPO).
- ``seq-mean-token-sum``: mean over responses of each response's token sum.
- ``seq-mean-token-sum-norm``: mean over responses of token sum / constant C (Dr. GRPO; C = the
  max generation length, by default the response dimension T).

"Responses" are rows with at least one valid token; all-padding rows count nowhere.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from sspo_jax.algorithms.config import LOSS_AGG_MODES

Array = jax.Array


def aggregate(per_token: Array, response_mask: Array, mode: str,
              norm_constant: Optional[float] = None) -> tuple[Array, Array]:
    """Reduces a per-token quantity [B, T] to a ``(sum, denominator)`` pair.

    With ``x = per_token``, ``m = response_mask``, ``n_b = sum_t m_{b,t}`` and R = the number
    of rows with ``n_b > 0``:

    - ``token-mean``: ``(sum_{b,t} m x, sum_b n_b)``
    - ``seq-mean-token-mean``: ``(sum_b sum_t m x / n_b, R)`` (empty rows add 0)
    - ``seq-mean-token-sum``: ``(sum_{b,t} m x, R)``
    - ``seq-mean-token-sum-norm``: ``(sum_{b,t} m x / C, R)``

    Args:
      per_token: float [B, T] values (masked positions are ignored whatever they hold).
      response_mask: bool or 0/1 [B, T].
      mode: one of `LOSS_AGG_MODES`.
      norm_constant: C for ``seq-mean-token-sum-norm``; None uses ``T = per_token.shape[1]``.
    Returns:
      (loss_sum, denominator), float32 [] each; the denominator depends only on the mask.
    Raises:
      ValueError: `mode` is not one of `LOSS_AGG_MODES`.
    """
    valid = response_mask.astype(bool)
    x = jnp.where(valid, per_token.astype(jnp.float32), 0.0)
    n_tok = jnp.sum(valid, axis=1).astype(jnp.float32)  # [B]
    rows = jnp.sum(n_tok > 0).astype(jnp.float32)
    if mode == "token-mean":
        return jnp.sum(x), jnp.sum(n_tok)
    if mode == "seq-mean-token-mean":
        return jnp.sum(jnp.sum(x, axis=1) / jnp.maximum(n_tok, 1.0)), rows
    if mode == "seq-mean-token-sum":
        return jnp.sum(x), rows
    if mode == "seq-mean-token-sum-norm":
        c = float(per_token.shape[1] if norm_constant is None else norm_constant)
        return jnp.sum(x) / c, rows
    raise ValueError(f"loss_agg_mode={mode!r} is not one of {list(LOSS_AGG_MODES)}")


def safe_divide(loss_sum: Array, denominator: Array) -> Array:
    """``loss_sum / max(denominator, 1)``: the mean, and 0 for an empty batch (sum is 0 then).

    Args:
      loss_sum, denominator: float32 [] (or any broadcastable shapes), e.g. from `aggregate`.
    Returns:
      The quotient, shaped like the broadcast inputs.
    """
    return loss_sum / jnp.maximum(denominator, 1.0)
