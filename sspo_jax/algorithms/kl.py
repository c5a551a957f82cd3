"""Per-token KL estimators between the policy and a reference (Schulman's k1, k2, k3).

With ``d = ref_logp - logp`` evaluated at tokens sampled from the policy:
``k1 = -d`` (unbiased, can be negative), ``k2 = d^2 / 2``, ``k3 = exp(d) - d - 1`` (unbiased,
always >= 0, 0 iff logp == ref_logp; GRPO's choice). ``d`` is clamped to +-20 before ``exp`` so
that the estimate stays finite for extreme log-ratios; `clamp` optionally bounds the result.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from sspo_jax.algorithms.config import KL_ESTIMATORS

Array = jax.Array
_LOG_CLAMP = 20.0


def kl_penalty(logp: Array, ref_logp: Array, estimator: str = "k3", clamp: Optional[float] = None) -> Array:
    """Per-token estimate of KL(pi_theta || pi_ref) at the sampled tokens.

    With ``d = clip(ref_logp - logp, -20, 20)``: ``k1 = -d``, ``k2 = d^2 / 2``,
    ``k3 = exp(d) - d - 1`` (>= 0, 0 iff logp == ref_logp).

    Args:
      logp: float [B, T] log-probs of the taken tokens under the policy (gradient flows).
      ref_logp: float [B, T] log-probs under the reference (stop-gradient).
      estimator: ``k1``, ``k2`` or ``k3``.
      clamp: if set, the estimate is clipped to ``[-clamp, clamp]``.
    Returns:
      float32 [B, T]. Nothing is masked: put equal values (e.g. 0) in both inputs on padding,
      which gives 0 there, or mask the result.
    Raises:
      ValueError: `estimator` is not one of `KL_ESTIMATORS`.
    """
    d = jnp.clip(jax.lax.stop_gradient(ref_logp).astype(jnp.float32) - logp.astype(jnp.float32),
                 -_LOG_CLAMP, _LOG_CLAMP)
    if estimator == "k1":
        kl = -d
    elif estimator == "k2":
        kl = 0.5 * d**2
    elif estimator == "k3":
        kl = jnp.exp(d) - d - 1.0
    else:
        raise ValueError(f"kl_estimator={estimator!r} is not one of {list(KL_ESTIMATORS)}")
    if clamp is not None:
        kl = jnp.clip(kl, -clamp, clamp)
    return kl
