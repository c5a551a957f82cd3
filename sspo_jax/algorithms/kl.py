"""Per-token KL estimators between the policy and a reference (Schulman's k1, k2, k3).

With ``d = ref_logp - logp`` evaluated at tokens sampled from the policy:
``k1 = -d`` (unbiased, can be negative), ``k2 = d^2 / 2``, ``k3 = exp(d) - d - 1`` (unbiased,
always >= 0, 0 iff logp == ref_logp; GRPO's choice). Only k3 exponentiates, so only k3 clamps
``d`` to +-20 (before ``exp``; past the clamp its gradient is 0, as verl's ``low_var_kl``);
`clamp` optionally bounds the result of any estimator.

Used as a loss (differentiated per sample, GRPO and verl's ``use_kl_loss``), the estimators do
not all have the gradient of the KL they estimate. With ``pi = pi_theta`` and samples y ~ pi:
``grad k1 = grad logp`` (expectation 0: no regularisation), ``grad k2 = log(pi/pi_ref) grad logp``
(expectation = grad KL(pi || pi_ref), the reverse KL), ``grad k3 = (1 - pi_ref/pi) grad logp``
(expectation = grad KL(pi_ref || pi), the forward KL, which agrees with the reverse KL's gradient
to first order in log(pi/pi_ref)). This is faithful to GRPO and verl, and tested exactly.
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

    With ``d = ref_logp - logp``: ``k1 = -d``, ``k2 = d^2 / 2``, ``k3 = exp(c) - c - 1`` with
    ``c = clip(d, -20, 20)`` (>= 0, 0 iff logp == ref_logp). As a loss, the k3 gradient
    ``(1 - pi_ref/pi) d logp`` has on-policy the expectation of the forward KL(pi_ref || pi)'s
    gradient, the reverse KL's to first order (module docstring).

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
    d = jax.lax.stop_gradient(ref_logp).astype(jnp.float32) - logp.astype(jnp.float32)
    if estimator == "k1":
        kl = -d
    elif estimator == "k2":
        kl = 0.5 * d**2
    elif estimator == "k3":
        c = jnp.clip(d, -_LOG_CLAMP, _LOG_CLAMP)  # the only estimator with exp
        kl = jnp.exp(c) - c - 1.0
    else:
        raise ValueError(f"kl_estimator={estimator!r} is not one of {list(KL_ESTIMATORS)}")
    if clamp is not None:
        kl = jnp.clip(kl, -clamp, clamp)
    return kl
