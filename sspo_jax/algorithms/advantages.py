"""Advantage estimators (ALGORITHMS.md 5, 7, 8). All are computed once per rollout, no gradient.

Group estimators take rewards [N] with the G responses of each prompt in consecutive rows
(``N = num_prompts * G``). A group whose rewards are all exactly equal gets advantage exactly 0:
it carries no learning signal, and dividing its float residue by a tiny std would make huge
advantages (PITFALLS.md 7).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from sspo_jax.algorithms.config import AlgorithmConfig
from sspo_jax.algorithms.kl import kl_penalty

Array = jax.Array


def _groups(rewards: Array, group_size: int) -> Array:
    n = rewards.shape[0]
    if group_size < 1 or n % group_size:
        raise ValueError(f"rewards of length {n} cannot be split into groups of group_size={group_size}: "
                         "the batch must hold whole groups (num_prompts * group_size rows)")
    return rewards.astype(jnp.float32).reshape(n // group_size, group_size)


def _all_equal(groups: Array) -> Array:
    """[num_groups, 1] bool: every reward in the group is exactly equal."""
    return (jnp.max(groups, axis=1, keepdims=True) == jnp.min(groups, axis=1, keepdims=True))


def group_zscore(rewards: Array, group_size: int, *, eps: float = 1e-6,
                 valid: Optional[Array] = None) -> tuple[Array, Array]:
    """GRPO's ``A_i = (R_i - mean_G R) / (std_G R + eps)`` with the unbiased std (ddof = 1).

    A group whose rewards are all exactly equal gets ``A = 0`` exactly (ALGORITHMS.md 5).

    Args:
      rewards: float [N], groups of `group_size` consecutive rows (``N = num_prompts * G``).
      group_size: G, responses per prompt.
      eps: added to the group std.
      valid: optional bool [N]; invalid rows get A = 0 (their rewards still form the group).
    Returns:
      (advantages float32 [N], fraction of groups whose rewards are all equal, float32 []).
      With ``group_size == 1`` every group is trivially all-equal and A = 0.
    Raises:
      ValueError: `group_size` < 1 or N is not a multiple of it.
    """
    g = _groups(rewards, group_size)
    same = _all_equal(g)
    mean = jnp.mean(g, axis=1, keepdims=True)
    if group_size > 1:
        std = jnp.std(g, axis=1, keepdims=True, ddof=1)
        adv = (g - mean) / (std + eps)
    else:
        adv = jnp.zeros_like(g)
    adv = jnp.where(same, 0.0, adv).reshape(-1)
    if valid is not None:
        adv = jnp.where(valid, adv, 0.0)
    return adv, jnp.mean(same.astype(jnp.float32))


def group_mean(rewards: Array, group_size: int) -> Array:
    """Dr. GRPO's ``A_i = R_i - mean_G R`` (no std); all-equal groups give exactly 0.

    Args:
      rewards: float [N], groups of `group_size` consecutive rows.
      group_size: G, responses per prompt.
    Returns:
      float32 [N] advantages.
    Raises:
      ValueError: `group_size` < 1 or N is not a multiple of it.
    """
    g = _groups(rewards, group_size)
    adv = g - jnp.mean(g, axis=1, keepdims=True)
    return jnp.where(_all_equal(g), 0.0, adv).reshape(-1)


def rloo(rewards: Array, group_size: int) -> Array:
    """REINFORCE leave-one-out: ``A_i = R_i - mean_{j != i} R_j = G/(G-1) (R_i - mean_G R)``.

    Args:
      rewards: float [N], groups of `group_size` consecutive rows.
      group_size: G, responses per prompt; 1 has no other sample to compare with and gives 0.
    Returns:
      float32 [N] advantages; all-equal groups give exactly 0.
    Raises:
      ValueError: `group_size` < 1 or N is not a multiple of it.
    """
    if group_size == 1:
        return jnp.zeros(rewards.shape, jnp.float32)
    g = _groups(rewards, group_size)
    others = (jnp.sum(g, axis=1, keepdims=True) - g) / (group_size - 1)
    return jnp.where(_all_equal(g), 0.0, g - others).reshape(-1)


def outcome_token_rewards(rewards: Array, response_mask: Array) -> Array:
    """Places each row's outcome reward on its last valid token (PPO's sparse token reward).

    Args:
      rewards: float [B] outcome reward per response.
      response_mask: bool or 0/1 [B, T].
    Returns:
      float32 [B, T]: ``r[b, t] = R_b`` at the last t with ``response_mask[b, t]``, 0 elsewhere
      (all 0 for a row with no valid token).
    """
    valid = response_mask.astype(bool)
    t = valid.shape[1]
    last = t - 1 - jnp.argmax(valid[:, ::-1], axis=1)  # index of the last valid token
    onehot = (jnp.arange(t)[None, :] == last[:, None]) & valid
    return jnp.where(onehot, rewards.astype(jnp.float32)[:, None], 0.0)


def kl_shaped_token_rewards(rewards: Array, response_mask: Array, old_logp: Array, ref_logp: Array, *,
                            beta: float, estimator: str = "k1") -> tuple[Array, Array]:
    """PPO's per-token reward with the KL in it (InstructGPT; verl's ``use_kl_in_reward``):
    ``r_t = -beta * KL_t`` on every valid response token, plus the outcome reward R on the last.

    ``KL_t = kl_penalty(old_logp, ref_logp, estimator)`` at the sampled token, e.g. k1:
    ``log pi_old(y_t) - log pi_ref(y_t)``. No gradient flows (rollout data).

    Args:
      rewards: float [B] outcome rewards.
      response_mask: bool or 0/1 [B, T].
      old_logp: float [B, T] behaviour-policy log-probs of the sampled tokens.
      ref_logp: float [B, T] reference-policy log-probs of the same tokens.
      beta: the KL coefficient (>= 0).
      estimator: ``k1``, ``k2`` or ``k3`` (see `kl.kl_penalty`).
    Returns:
      (token rewards float32 [B, T], KL_t float32 [B, T]), both 0 on masked positions.
    """
    valid = response_mask.astype(bool)
    kl_t = kl_penalty(jax.lax.stop_gradient(old_logp), ref_logp, estimator)
    kl_t = jnp.where(valid, kl_t, 0.0)
    return outcome_token_rewards(rewards, valid) - beta * kl_t, kl_t


def gae(token_rewards: Array, values: Array, response_mask: Array, *, gamma: float = 1.0,
        lam: float = 1.0) -> tuple[Array, Array]:
    """Generalised advantage estimation over response tokens with a reverse `lax.scan`.

    ``delta_t = r_t + gamma * V_next - V_t``, ``A_t = delta_t + gamma * lam * A_next``, where
    "next" is the next *valid* token (masked positions are skipped, V = 0 after the last).

    With ``gamma = lam = 1`` and an outcome reward R on the last token, ``A_t = R - V_t``.

    Args:
      token_rewards: float [B, T] (e.g. `outcome_token_rewards`, minus a KL-in-reward term);
        ignored on masked positions.
      values: float [B, T] critic values V_t at each position (stop-gradient; ignored on masked
        positions).
      response_mask: bool or 0/1 [B, T].
      gamma: discount.
      lam: GAE lambda.
    Returns:
      (advantages, returns = advantages + values), float32 [B, T] each, 0 on masked positions.
      No whitening here: see `whiten`.
    """
    valid = response_mask.astype(bool)
    r = jnp.where(valid, token_rewards.astype(jnp.float32), 0.0)
    v = jnp.where(valid, jax.lax.stop_gradient(values).astype(jnp.float32), 0.0)

    def step(carry, xs):
        next_value, next_adv = carry
        r_t, v_t, m_t = xs
        delta = r_t + gamma * next_value - v_t
        adv = delta + gamma * lam * next_adv
        carry = (jnp.where(m_t, v_t, next_value), jnp.where(m_t, adv, next_adv))
        return carry, jnp.where(m_t, adv, 0.0)

    b = r.shape[0]
    init = (jnp.zeros((b,), jnp.float32), jnp.zeros((b,), jnp.float32))
    _, adv_t = jax.lax.scan(step, init, (r.T, v.T, valid.T), reverse=True)
    adv = adv_t.T
    return adv, jnp.where(valid, adv + v, 0.0)


def whiten(values: Array, response_mask: Array, eps: float = 1e-8) -> Array:
    """``(x - mean) / (std + eps)`` with mean and population std over the valid tokens of the batch.

    Args:
      values: float [B, T] (e.g. GAE advantages); ignored on masked positions.
      response_mask: bool or 0/1 [B, T].
      eps: added to the std.
    Returns:
      float32 [B, T], 0 on masked positions (all 0 when no token is valid).
    """
    valid = response_mask.astype(bool)
    n = jnp.maximum(jnp.sum(valid), 1)
    x = jnp.where(valid, values.astype(jnp.float32), 0.0)
    mean = jnp.sum(x) / n
    var = jnp.sum(jnp.where(valid, (x - mean) ** 2, 0.0)) / n
    return jnp.where(valid, (x - mean) / (jnp.sqrt(var) + eps), 0.0)


def sequence_baseline(rewards: Array, critic_logit: Array) -> Array:
    """SPPO's ``A = R - V(x)`` with ``V(x) = sigmoid(z(x))`` from the prompt-only critic.

    Args:
      rewards: float [B] outcome rewards R in [0, 1].
      critic_logit: float [B] critic logits z(x) (stop-gradient).
    Returns:
      float32 [B] advantages; broadcast them to every response token of the row.
    """
    return rewards.astype(jnp.float32) - jax.nn.sigmoid(jax.lax.stop_gradient(critic_logit).astype(jnp.float32))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AdvantageResult:
    """What every estimator returns, in one shape.

    Attributes:
      advantages: fp32 [N, T] per-token advantages (sequence advantages broadcast over the row;
        only response positions are used).
      returns: fp32 [N, T] value targets (GAE's A + V on response tokens; zeros for the other
        estimators).
      metrics: float32 [] diagnostics: ``zero_variance_group_frac`` (group estimators),
        ``value_mean`` (GAE: the critic's mean value over response tokens; with the KL in the
        reward also ``kl_in_reward_mean``, the mean KL_t over response tokens) or
        ``critic_value_mean`` (sequence baseline: mean of sigmoid(z(x))).
    """

    advantages: Array
    returns: Array
    metrics: dict


def estimate_advantages(cfg: AlgorithmConfig, rewards: Array, response_mask: Array, *,
                        values: Optional[Array] = None, prompt_logits: Optional[Array] = None,
                        old_logp: Optional[Array] = None, ref_logp: Optional[Array] = None) -> AdvantageResult:
    """The advantage estimator ``cfg.advantage`` (ALGORITHMS.md 5) behind one entry point.

    ``group_zscore``: A_i = (R_i - mean_G R) / (std_G R + cfg.adv_eps); ``group_mean``: R_i - mean_G R;
    ``rloo``: R_i minus the mean of the other G - 1; ``gae``: reverse scan over response tokens with
    the outcome reward on the last valid token (``cfg.gae_gamma``, ``cfg.gae_lambda``) and, with
    ``cfg.kl_in_reward_beta > 0``, ``-beta * KL_t`` on every response token
    (`kl_shaped_token_rewards`), whitened over valid tokens when ``cfg.whiten_advantages``;
    ``sequence_baseline``: A = R - sigmoid(z(x)).
    All-equal groups get exactly 0. Pure and jit-able; no gradient flows (inputs are rollout data).

    Args:
      cfg: the algorithm (its ``advantage``, ``group_size`` and estimator settings).
      rewards: float [N] total rewards, the G responses of a prompt in consecutive rows.
      response_mask: bool or 0/1 [N, T], 1 on trained response tokens.
      values: fp32 [N, T] token values of the critic at rollout time (``gae`` only).
      prompt_logits: fp32 [N] prompt critic logits z(x) (``sequence_baseline`` only).
      old_logp, ref_logp: fp32 [N, T] behaviour and reference log-probs (``gae`` with
        ``cfg.kl_in_reward_beta > 0`` only).
    Returns:
      `AdvantageResult` with advantages and returns fp32 [N, T] and the estimator's metrics.
    Raises:
      ValueError: the estimator's input is missing, or N does not split into whole groups.
    """
    mask = response_mask.astype(bool)
    n, t = mask.shape
    zeros = jnp.zeros((n, t), jnp.float32)
    broadcast = lambda a: jnp.broadcast_to(a.astype(jnp.float32)[:, None], (n, t))  # noqa: E731
    kind = cfg.advantage
    if kind == "group_zscore":
        a, zero_frac = group_zscore(rewards, cfg.group_size, eps=cfg.adv_eps)
        return AdvantageResult(broadcast(a), zeros, {"zero_variance_group_frac": zero_frac})
    if kind in ("group_mean", "rloo"):
        a = (group_mean if kind == "group_mean" else rloo)(rewards, cfg.group_size)
        zero_frac = jnp.mean(_all_equal(_groups(rewards, cfg.group_size)).astype(jnp.float32))
        return AdvantageResult(broadcast(a), zeros, {"zero_variance_group_frac": zero_frac})
    if kind == "gae":
        if values is None:
            raise ValueError("advantage='gae' needs the critic's token values [N, T] (values=...)")
        n_valid = jnp.maximum(jnp.sum(mask), 1)
        metrics = {}
        if cfg.kl_in_reward_beta > 0:
            if old_logp is None or ref_logp is None:
                raise ValueError(f"kl_in_reward_beta={cfg.kl_in_reward_beta} needs the behaviour and reference "
                                 "log-probs [N, T] (old_logp=..., ref_logp=...)")
            token_rewards, kl_t = kl_shaped_token_rewards(rewards, mask, old_logp, ref_logp,
                                                          beta=cfg.kl_in_reward_beta,
                                                          estimator=cfg.kl_in_reward_estimator)
            metrics["kl_in_reward_mean"] = jnp.sum(kl_t) / n_valid
        else:
            token_rewards = outcome_token_rewards(rewards, mask)
        a, returns = gae(token_rewards, values, mask, gamma=cfg.gae_gamma, lam=cfg.gae_lambda)
        a = whiten(a, mask) if cfg.whiten_advantages else a
        metrics["value_mean"] = jnp.sum(jnp.where(mask, values, 0.0)) / n_valid
        return AdvantageResult(a.astype(jnp.float32), returns.astype(jnp.float32), metrics)
    if kind == "sequence_baseline":
        if prompt_logits is None:
            raise ValueError("advantage='sequence_baseline' needs the prompt critic's logits [N] (prompt_logits=...)")
        a = sequence_baseline(rewards, prompt_logits)
        return AdvantageResult(broadcast(a), zeros,
                               {"critic_value_mean": jnp.mean(jax.nn.sigmoid(prompt_logits.astype(jnp.float32)))})
    raise ValueError(f"unknown advantage estimator {kind!r}")
