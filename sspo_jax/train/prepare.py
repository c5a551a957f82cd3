"""Stages 3 and 4 of an RL step: token statistics and advantages, giving the `RolloutBatch` the
update trains on.

    batch, metrics = prepare_batch(scored, state, fns, rows, alg)

Token statistics (the behaviour policy's log-probs and entropies, reference log-probs, critic
outputs) come from the jitted stats pass with the training forward; subsentence ids from the
delimiter table; advantages from `sspo_jax.algorithms.advantages.estimate_advantages`. Host metrics
are computed over the global batch (every process computes the same values).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sspo_jax.algorithms import segment_entropy_stats
from sspo_jax.algorithms.entropy_mask import entropy_threshold
from sspo_jax.algorithms.advantages import estimate_advantages
from sspo_jax.algorithms.config import AlgorithmConfig
from sspo_jax.parallel import gather
from sspo_jax.train.host_rows import HostRows
from sspo_jax.train.records import ScoredRollout
from sspo_jax.train.state import RolloutBatch, TrainState


@dataclasses.dataclass(frozen=True)
class PrepareFns:
    """The jitted functions of the preparation stages.

    Attributes:
      stats: ``stats(state, tokens, attention_mask, last_prompt_index, prompt_width=P) -> dict``
        (see `sspo_jax.train.step.make_stats_fn`).
      segments: ``segments(tokens, response_mask) -> int32 [N, T]`` subsentence ids.
    """

    stats: Callable[..., dict]
    segments: Callable[..., jax.Array]


def response_mask_for_training(scored: ScoredRollout, alg: AlgorithmConfig) -> np.ndarray:
    """bool [N, T]: the tokens the update trains on (truncated rows dropped when
    ``alg.mask_truncated``)."""
    mask = scored.response_mask.copy()
    if alg.mask_truncated:
        mask[scored.truncated] = False
    return mask


def batch_metrics(rmask: jax.Array, advantages: jax.Array, old_logp: jax.Array | None, entropy: jax.Array | None,
                  sampler_logp: np.ndarray) -> dict[str, float]:
    """Advantage, entropy and sampler-vs-trainer drift statistics over the valid tokens of the
    global batch (all [N, T]; `sampler_logp` the global host array). With `old_logp` None (the
    stats pass skipped the behaviour log-probs) only the advantage statistics: the update reports
    the others (`sspo_jax.train.step.ONPOLICY_BATCH_METRICS`)."""
    if old_logp is None:
        valid = gather(rmask)
        adv_np = gather(advantages)[valid] if valid.any() else np.zeros(1)
        return {"advantage/mean": float(adv_np.mean()), "advantage/std": float(adv_np.std()),
                "advantage/min": float(adv_np.min()), "advantage/max": float(adv_np.max())}
    valid = gather(rmask)
    if not valid.any():
        zero = np.zeros(1)
        adv_np, drift, ent = zero, zero, zero
    else:
        adv_np = gather(advantages)[valid]
        drift = np.abs(gather(old_logp) - sampler_logp)[valid]
        ent = gather(entropy)[valid]
    return {"advantage/mean": float(adv_np.mean()), "advantage/std": float(adv_np.std()),
            "advantage/min": float(adv_np.min()), "advantage/max": float(adv_np.max()),
            "sampler_logp_abs_diff": float(drift.mean()), "sampler_logp_abs_diff_max": float(drift.max()),
            "old_entropy_mean": float(ent.mean()) if valid.any() else 0.0}


def prepare_batch(scored: ScoredRollout, state: TrainState, fns: PrepareFns, rows: HostRows,
                  alg: AlgorithmConfig) -> tuple[RolloutBatch, dict[str, Any]]:
    """The device batch of `scored` (this process's rows) with its token stats and advantages.

    When the stats pass returns no ``old_logp`` (``make_stats_fn(policy_stats=False)``), the batch
    carries the sampler's log-probs as ``old_logp`` and zero entropies, for an update built with
    ``old_logp_from_sampler=True``, which reports the drift and entropy metrics itself.

    Returns:
      (`RolloutBatch` of the global N rows, host float metrics: the estimator's diagnostics,
      ``advantage/*``, ``sampler_logp_abs_diff(_max)``, ``old_entropy_mean`` (the last three only
      when the stats pass computed the behaviour log-probs)).
    """
    n_local, t = scored.tokens.shape
    rmask = rows.to_device(response_mask_for_training(scored, alg))
    tokens, attn = rows.to_device(scored.tokens), rows.to_device(scored.attention_mask)
    last_prompt = rows.to_device(np.full((n_local,), scored.prompt_width - 1, np.int32))
    stats = fns.stats(state, tokens, attn, last_prompt, prompt_width=scored.prompt_width)
    zeros = rows.to_device(np.zeros((n_local, t), np.float32))
    if "old_logp" in stats:
        old_logp, entropy = stats["old_logp"], stats["entropy"]
    else:  # stats pass without the policy (step.needs_policy_stats): the update reads the sampler's log-probs
        old_logp, entropy = rows.to_device(np.asarray(scored.sampler_logp, np.float32)), zeros
    seg = fns.segments(tokens, rmask)
    rewards = rows.to_device(scored.rewards)
    critic = stats.get("critic")
    kl_in_reward = alg.kl_in_reward_beta > 0  # needs the stats pass's old_logp (step.needs_policy_stats)
    adv = estimate_advantages(alg, rewards, rmask, values=critic if alg.advantage == "gae" else None,
                              prompt_logits=critic if alg.advantage == "sequence_baseline" else None,
                              old_logp=old_logp if kl_in_reward else None,
                              ref_logp=stats.get("ref_logp") if kl_in_reward else None)
    metrics = {k: float(v) for k, v in adv.metrics.items()}
    have = "old_logp" in stats
    metrics.update(batch_metrics(rmask, adv.advantages, old_logp if have else None, entropy if have else None,
                                 rows.gather(scored.sampler_logp)))
    batch = RolloutBatch(
        tokens=tokens, attention_mask=attn, response_mask=rmask, old_logp=old_logp, entropy=entropy,
        ref_logp=stats.get("ref_logp", zeros), segment_ids=seg, advantages=adv.advantages.astype(jnp.float32),
        returns=adv.returns if alg.advantage == "gae" else zeros,
        old_values=critic if alg.advantage == "gae" else zeros, rewards=rewards, last_prompt_index=last_prompt,
        prompt_width=int(scored.prompt_width),
        entropy_stats=segment_entropy_stats(entropy, rmask, seg),
        entropy_threshold=entropy_threshold(entropy, rmask, alg.entropy_mask_percentile)
        if alg.entropy_mask_percentile is not None else None)
    return batch, metrics
