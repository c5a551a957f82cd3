"""The train state and the rollout batch, both pytrees (jit arguments, Orbax checkpoint items)."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from sspo_jax.algorithms.clipping import EntropyStats

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything that changes during training (the model graph definitions are static).

    Attributes:
      step: int32 [], completed RL iterations.
      rng: uint32 [2] PRNG key data (raw, so that checkpoints hold plain arrays).
      params: policy parameters (`nnx.State` of `nnx.Param`s).
      opt_state: Optax state of the policy.
      critic_params, critic_opt_state: the critic's (PPO, SPPO); None otherwise.
      ref_params: frozen reference policy for the KL terms; None unless the algorithm
        ``needs_ref_logp`` (a KL in the loss or in the reward).
    """

    step: Array
    rng: Array
    params: Any
    opt_state: Any
    critic_params: Optional[Any] = None
    critic_opt_state: Optional[Any] = None
    ref_params: Optional[Any] = None

    def replace(self, **changes) -> "TrainState":
        """A copy with the given fields replaced."""
        return dataclasses.replace(self, **changes)

    @property
    def key(self) -> Array:
        """`rng` as a typed PRNG key array (shape [])."""
        return jax.random.wrap_key_data(self.rng)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RolloutBatch:
    """One scored rollout batch ready for the update, N rows of width T (prompt + response).

    Prompts are left-padded, so the prompt ends at the same column in every row and responses
    start right after it.

    Attributes (all [N, T] unless noted):
      tokens: int32 (left-padded prompt, then response, padded after the stop token);
        attention_mask: bool, False on padding; response_mask: bool, True on trained response
        tokens (EOS included), False on prompt and padding.
      old_logp, entropy: fp32 ``log p(tokens[:, t] | tokens[:, :t])`` and the entropy of that
        next-token distribution under the behaviour policy (trainer forward); column 0 is 0.
        Defined on every column; only `response_mask` positions are used. When the stats pass
        skips them (`sspo_jax.train.step.needs_policy_stats` False), `old_logp` holds the
        sampler's log-probs (read only for the drift metric) and `entropy` zeros.
      ref_logp: fp32 reference log-probs (zeros when the algorithm has no KL term).
      segment_ids: int32 subsentence ids (-1 off the response).
      advantages: fp32 per token (sequence advantages broadcast); only response positions used.
      returns, old_values: fp32 GAE value targets (0 off the response) and the critic's values
        at rollout time (PPO's token critic; zeros otherwise).
      rewards: fp32 [N] total rewards (SPPO critic targets).
      last_prompt_index: int32 [N] column of the last prompt token (SPPO critic).
      entropy_stats: global-batch `EntropyStats` (float32 [] sums) for SSPO's entropy
        normalisation; not split with the rows.
      entropy_threshold: float32 [], the global batch's entropy percentile of the top-entropy
        mask (``algorithm.entropy_mask_percentile``); None without the mask. Not split either.
      prompt_width: P, the prompt columns (the same in every row), a static pytree field (not an
        array: it fixes shapes, so SPPO's prompt critic runs its forward over ``tokens[:, :P]``
        only); None: unknown, the critic reads whole rows.
    """

    tokens: Array
    attention_mask: Array
    response_mask: Array
    old_logp: Array
    entropy: Array
    ref_logp: Array
    segment_ids: Array
    advantages: Array
    returns: Array
    old_values: Array
    rewards: Array
    last_prompt_index: Array
    entropy_stats: EntropyStats
    entropy_threshold: Optional[Array] = None
    prompt_width: Optional[int] = dataclasses.field(default=None, metadata={"static": True})

    @property
    def num_rows(self) -> int:
        """N, the number of rows."""
        return int(self.tokens.shape[0])


GLOBAL_FIELDS = ("entropy_stats", "entropy_threshold")
"""`RolloutBatch` fields that describe the whole batch and are never split with its rows."""


def split_globals(batch: RolloutBatch) -> tuple[RolloutBatch, dict[str, Any]]:
    """(`batch` with its `GLOBAL_FIELDS` set to None, so every leaf is per-row; those fields)."""
    return (dataclasses.replace(batch, **{k: None for k in GLOBAL_FIELDS}),
            {k: getattr(batch, k) for k in GLOBAL_FIELDS})


def with_globals(rows: RolloutBatch, globals_: dict[str, Any]) -> RolloutBatch:
    """The inverse of `split_globals`: per-row fields from `rows`, the global ones from `globals_`."""
    return dataclasses.replace(rows, **globals_)


def take_rows(batch: RolloutBatch, idx: Array) -> RolloutBatch:
    """The rows `idx` (int [K]) of every per-row field: a batch of K rows (the `GLOBAL_FIELDS` stay)."""
    rows, globals_ = split_globals(batch)
    return with_globals(jax.tree.map(lambda v: jnp.take(v, idx, axis=0), rows), globals_)
