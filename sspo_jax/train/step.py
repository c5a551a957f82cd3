"""The jitted pieces of an RL iteration: the rollout statistics pass and the update step.

`make_stats_fn` computes, in micro-batches, the behaviour policy's log-probs and entropies (and
the reference log-probs and critic outputs when the algorithm needs them) with the training
forward pass, never materialising [N, T, V] logits.

`make_update_fn` builds ``update(state, batch) -> (state, metrics)``: ``ppo_epochs`` passes, each
over ``num_minibatches`` shuffled minibatches; a minibatch's gradient is accumulated over
micro-batches as (sum of loss_sum gradients) / (sum of denominators), which is exactly the
gradient of the whole minibatch for every aggregation mode, accumulated in fp32 whatever the
parameter dtype. A minibatch whose loss, gradient or new parameters are not finite is skipped
(parameters and optimizer state unchanged) and counted.

On-policy updates (the first minibatch of the first epoch) use ``old_logp = stop_gradient(logp)``
of the update's own forward when ``exact_on_policy_ratio`` (ratio exactly 1 in any dtype; the
stats pass's log-probs differ from the update's by the numerics of two forwards, up to ~0.1 in
bf16 compute). `needs_policy_stats` says when the stats pass must still compute the behaviour
log-probs; when it need not (one update per batch, no entropy-dependent loss), the update reports
the sampler drift and the entropy from its own forward (`ONPOLICY_BATCH_METRICS`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sspo_jax.algorithms import losses
from sspo_jax.algorithms.config import AlgorithmConfig
from sspo_jax.models.token_stats import token_logprobs_from_hidden
from sspo_jax.train.state import RolloutBatch, TrainState, split_globals, with_globals

Array = jax.Array
_F32 = jnp.float32

# Batch metrics that the update computes from its own forward when the stats pass skipped the
# behaviour log-probs (`make_update_fn(old_logp_from_sampler=True)`); the same keys and meanings as
# those of `sspo_jax.train.prepare.batch_metrics`, so the trainer reports them unprefixed.
ONPOLICY_BATCH_METRICS = ("sampler_logp_abs_diff", "sampler_logp_abs_diff_max", "old_entropy_mean")


def needs_policy_stats(alg: AlgorithmConfig, exact_on_policy_ratio: bool) -> bool:
    """Whether the stats pass must compute the behaviour policy's log-probs and entropies.

    They are needed unless every update of a batch is on-policy with the exact ratio
    (``exact_on_policy_ratio`` and ``ppo_epochs * num_minibatches == 1``) and the loss needs no
    entropy before it runs (``alg.uses_entropy``: SSPO's entropy-scaled bounds, top-entropy
    masks) and the advantages need no behaviour log-probs (``alg.kl_in_reward_beta > 0``: PPO's
    KL in the reward). Reference log-probs (KL) and critic outputs are computed by the stats pass
    regardless.
    """
    off_policy = alg.ppo_epochs * alg.num_minibatches > 1
    return (not exact_on_policy_ratio) or off_policy or alg.uses_entropy or alg.kl_in_reward_beta > 0


@dataclasses.dataclass(frozen=True)
class Models:
    """Static graph definitions (hashable) of the policy and the optional critic.

    Attributes:
      policy: the policy's `nnx.GraphDef` (a Qwen2 causal LM).
      critic: the critic's `nnx.GraphDef`; None without a critic.
      critic_kind: ``none``, ``token`` (PPO: a value per position) or ``prompt`` (SPPO: one logit
        per row), as ``AlgorithmConfig.critic``.
    """

    policy: Any
    critic: Any = None
    critic_kind: str = "none"


def policy_token_stats(graphdef, params, tokens: Array, attention_mask: Array, chunk_size: int,
                       compute_entropy: bool, temperature: float = 1.0,
                       prompt_width: int | None = None) -> tuple[Array, Array | None]:
    """Log-probs and entropies of each row's own tokens, ``logp[b, t] = log p(tok_t | tok_<t)``.

    The vocabulary projection runs `chunk_size` positions at a time (no [N, T, V] logits).
    `temperature` divides the logits (folded into the unembedding), so that the log-probs are
    those of the distribution the sampler drew from.

    Args:
      graphdef, params: the policy, split with `nnx.split` (gradient flows through `params`).
      tokens: int32 [N, T] full rows (prompt and response).
      attention_mask: bool or 0/1 [N, T], 0 on padding.
      chunk_size: positions per vocabulary-projection chunk.
      compute_entropy: also return the entropy of each next-token distribution.
      temperature: > 0; the sampling temperature.
      prompt_width: P (static), the prompt columns of left-padded rows: only the response columns
        ``>= P`` are projected onto the vocabulary (the prompt's own log-probs are never used, and
        with a 152k vocabulary the projection is the largest matmul of a small model); columns
        before P are then 0. None: every column from 1.
    Returns:
      (logp, entropy or None), fp32 [N, T] each; column 0 (and with `prompt_width` every prompt
      column) is 0 and positions under padding are meaningless: mask them with the response mask.
    """
    model = nnx.merge(graphdef, params)
    hidden = model.hidden_states(tokens, attention_mask)
    unembed = model.unembed_weight().astype(model.compute_dtype)
    if temperature != 1.0:
        unembed = unembed / jnp.asarray(temperature, unembed.dtype)
    return token_logprobs_from_hidden(hidden, unembed, tokens, chunk_size=chunk_size, compute_entropy=compute_entropy,
                                      start=max(prompt_width or 1, 1))


def critic_outputs(models: Models, critic_params, tokens: Array, attention_mask: Array,
                   last_prompt_index: Array, prompt_width: int | None = None) -> Array:
    """The critic's outputs for full rows.

    Args:
      models: uses ``models.critic`` and ``models.critic_kind`` (``token`` or ``prompt``).
      critic_params: the critic's parameters (gradient flows).
      tokens: int32 [N, T]; attention_mask: bool or 0/1 [N, T].
      last_prompt_index: int32 [N], column of each row's last prompt token (prompt critic only).
      prompt_width: P (static), the prompt columns of left-padded rows: the prompt critic's forward
        then runs over ``tokens[:, :P]`` only (it reads the last prompt position, which causal
        attention makes independent of the response: the same logit for a fraction of the cost);
        None: over whole rows. Ignored by the token critic.
    Returns:
      fp32 [N, T] token values (``token``: ``V[:, t]`` values the state before token t, 0 at
      column 0 and on padding) or fp32 [N] prompt logits z(x) (``prompt``).
    """
    critic = nnx.merge(models.critic, critic_params)
    if models.critic_kind == "token":
        return critic(tokens, attention_mask)
    if prompt_width is not None:
        tokens, attention_mask = tokens[:, :prompt_width], attention_mask[:, :prompt_width]
    return critic(tokens, attention_mask, last_prompt_index=last_prompt_index)


def _micro_split(x: Array, n_micro: int) -> Array:
    return x.reshape(n_micro, x.shape[0] // n_micro, *x.shape[1:])


def make_stats_fn(models: Models, alg: AlgorithmConfig, chunk_size: int, micro_rows: int,
                  temperature: float = 1.0, *, policy_stats: bool = True) -> Callable:
    """``stats(state, tokens, attention_mask, last_prompt_index, prompt_width=None) -> dict`` (jitted,
    no gradient).

    The rows are processed in ``max(N // micro_rows, 1)`` equal micro-batches with `lax.map`, so
    N must be divisible by that count (e.g. a multiple of `micro_rows`).

    Args:
      models: the static graph definitions.
      alg: decides whether ``ref_logp`` (``alg.needs_ref_logp``: a KL in the loss or the reward)
        and ``critic`` are computed.
      chunk_size: vocabulary-projection chunk, see `policy_token_stats`.
      micro_rows: rows per micro-batch.
      temperature: the sampling temperature (log-probs of the sampled distribution).
      policy_stats: compute the behaviour policy's ``old_logp`` and ``entropy``; False skips
        that forward when nothing needs it (`needs_policy_stats`).
    Returns:
      The jitted ``stats`` function. Its arguments: a `TrainState`, tokens int32 [N, T],
      attention_mask bool [N, T], last_prompt_index int32 [N] and the static ``prompt_width`` P
      (the log-probs and entropies are then projected for the response columns only, see
      `policy_token_stats`, and the prompt critic's forward covers the prompt columns only, see
      `critic_outputs`; None: whole rows). Its dict holds fp32 ``old_logp``
      and ``entropy`` [N, T] (the behaviour policy, with `policy_stats`), ``ref_logp`` [N, T] (only with
      ``alg.needs_ref_logp``) and ``critic`` (only with a critic: token values [N, T] or prompt logits
      [N], see `critic_outputs`); see `policy_token_stats` for the masking convention.
    """
    def stats(state: TrainState, tokens, attention_mask, last_prompt_index, prompt_width=None):
        n = tokens.shape[0]
        n_micro = max(n // micro_rows, 1)
        xs = (_micro_split(tokens, n_micro), _micro_split(attention_mask, n_micro), _micro_split(last_prompt_index, n_micro))

        def one(x):
            tk, am, lpi = x
            out = {}
            if policy_stats:  # the entropy is always logged; SSPO also scales its clip bounds with it
                out["old_logp"], out["entropy"] = policy_token_stats(models.policy, state.params, tk, am, chunk_size,
                                                                     True, temperature, prompt_width)
            if alg.needs_ref_logp:
                out["ref_logp"] = policy_token_stats(models.policy, state.ref_params, tk, am, chunk_size, False,
                                                     temperature, prompt_width)[0]
            if models.critic_kind != "none":
                out["critic"] = critic_outputs(models, state.critic_params, tk, am, lpi, prompt_width)
            return out

        out = jax.lax.map(one, xs)
        return jax.tree.map(lambda a: a.reshape(n, *a.shape[2:]), out)

    return jax.jit(stats, static_argnames=("prompt_width",))


# ---- metrics merging -------------------------------------------------------------------------

def _merge(acc: dict, new: dict, weight: Array) -> dict:
    """Running token-weighted sums; keys ending in _min/_max keep extremes."""
    out = {}
    for k, v in new.items():
        if k.endswith("_min"):
            out[k] = jnp.minimum(acc[k], v) if k in acc else v
        elif k.endswith("_max"):
            out[k] = jnp.maximum(acc[k], v) if k in acc else v
        else:
            out[k] = (acc[k] if k in acc else 0.0) + v * weight
    return out


def _finalise(acc: dict, total_weight: Array) -> dict:
    return {k: (v if (k.endswith("_min") or k.endswith("_max")) else v / jnp.maximum(total_weight, 1.0))
            for k, v in acc.items()}


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _masked_mean(x: Array, valid: Array) -> Array:
    return jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def _masked_max(x: Array, valid: Array) -> Array:
    """Largest `x` over `valid` positions of a non-negative quantity; 0 when none is valid."""
    return jnp.max(jnp.where(valid, x, 0.0), initial=0.0)


def _accumulate(acc, tree):
    return jax.tree.map(lambda a, g: a + g.astype(_F32), acc, tree)


def _same_dtypes(new, old):
    """`new` with the dtypes of `old` (an optimizer state keeps the dtypes its ``init`` gave it)."""
    return jax.tree.map(lambda n, o: n.astype(o.dtype), new, old)


def minibatch_rows(shuffle_key: Array, epoch: int, n: int, num_minibatches: int) -> Array:
    """The rows of each minibatch of one epoch: int32 [num_minibatches, n // num_minibatches].

    A permutation of ``range(n)`` drawn with ``fold_in(shuffle_key, epoch)``, cut into equal
    consecutive pieces, so every row is in exactly one minibatch per epoch; the identity order
    (no shuffle) with one minibatch. `make_update_fn` draws ``shuffle_key`` as the second half of
    ``jax.random.split(state.key)``.

    Args:
      shuffle_key: a typed PRNG key (shape []).
      epoch: the epoch index (static).
      n: rows N (static), a multiple of `num_minibatches`.
      num_minibatches: minibatches per epoch (static).
    """
    perm = (jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n) if num_minibatches > 1
            else jnp.arange(n))
    return perm.astype(jnp.int32).reshape(num_minibatches, n // num_minibatches)


def make_update_fn(models: Models, alg: AlgorithmConfig, policy_tx: optax.GradientTransformation,
                   critic_tx: optax.GradientTransformation | None, *, chunk_size: int, micro_rows: int,
                   temperature: float = 1.0, donate: bool = True, exact_on_policy_ratio: bool = True,
                   old_logp_from_sampler: bool = False) -> Callable:
    """``update(state, batch) -> (state, metrics)``, jitted with the state donated.

    For each of ``alg.ppo_epochs`` epochs the batch's N rows are shuffled (`minibatch_rows`: a
    permutation drawn from the state's PRNG key, so every row is in exactly one minibatch per
    epoch; no shuffle with one minibatch) and split into
    ``alg.num_minibatches`` minibatches, each into micro-batches of `micro_rows` rows (N a
    multiple of ``num_minibatches * micro_rows``; the trainer config validates this). Every
    minibatch of every epoch reads the same ``batch.old_logp`` (the stats pass's behaviour
    log-probs): the old policy stays the one that sampled the batch. Per
    minibatch the policy gradient is ``sum_micro grad(loss_sum) / max(sum_micro denominator, 1)``
    (exact for every aggregation mode; the sums are fp32 whatever the parameter dtype), and
    likewise for the critic loss (`losses.clipped_value_loss` or `losses.bce_critic_loss`, times
    ``alg.value_coef``). The optimizer states keep the dtypes their ``init`` gave them (see
    `sspo_jax.train.optim.with_moment_dtype` for choosing them). A minibatch whose loss or
    gradient is not finite leaves the parameters and optimizer states unchanged.

    The first minibatch of the first epoch is on-policy (the parameters are those that produced
    ``batch.old_logp``); with `exact_on_policy_ratio` its loss uses ``stop_gradient(logp)`` of its
    own forward as the old log-probs, so its ratios are exactly 1 and its gradient is the
    REINFORCE form ``-A * grad(logp)`` (plus KL), whatever the numerics of the stats pass.
    Clip-Cov (``alg.uses_rng``) gets a key per micro-batch folded from the state's key (the
    state's key advances as without it).

    Critic warm-up (``alg.critic_warmup_steps`` K): while ``state.step < K`` (the first K trainer
    steps) only the critic is updated; the policy's parameters and optimizer state are kept as
    they are (its losses and metrics are still computed and reported).

    SPPO's prompt critic runs over the prompt columns ``tokens[:, :batch.prompt_width]`` only
    (see `critic_outputs`); whole rows when ``batch.prompt_width`` is None.

    Args:
      models: the static graph definitions.
      alg: the algorithm (`losses.policy_loss`'s config; epochs, minibatches, critic settings).
      policy_tx, critic_tx: the optimizers (`critic_tx` None without a critic).
      chunk_size: vocabulary-projection chunk, see `policy_token_stats`.
      micro_rows: rows per micro-batch.
      temperature: the sampling temperature.
      donate: donate the input state's buffers to the output.
      exact_on_policy_ratio: the exact ratio of the on-policy minibatch (above).
      old_logp_from_sampler: the stats pass skipped the behaviour log-probs
        (``make_stats_fn(policy_stats=False)``, allowed only when `needs_policy_stats` is False)
        and ``batch.old_logp`` holds the sampler's log-probs: the update then reports the
        `ONPOLICY_BATCH_METRICS` (sampler drift, entropy) from its own forward.
    Returns:
      The jitted ``update(state: TrainState, batch: RolloutBatch)``. It returns the new state
      (``step + 1``, a fresh PRNG key) and float32 [] metrics: the mean over minibatch updates of
      ``loss``, ``grad_norm`` (before clipping), every `LossOutput.metrics` key (token-weighted
      over micro-batches; ``*_min``/``*_max`` as extremes), ``onpolicy_ratio_dev_max`` (the
      largest ``|exp(logp - batch.old_logp) - 1|`` of a valid token in the on-policy minibatch:
      the update's forward against the stats pass's; absent with `old_logp_from_sampler`) or the
      `ONPOLICY_BATCH_METRICS` (with `old_logp_from_sampler`) and, with a critic, ``critic_loss``
      and ``critic_grad_norm``; ``skipped`` (number of non-finite minibatches) and ``updates``
      (number of minibatch updates).
    Raises:
      ValueError: `old_logp_from_sampler` where the loss needs the stats pass's log-probs.
    """
    has_critic = models.critic_kind != "none"
    if old_logp_from_sampler and needs_policy_stats(alg, exact_on_policy_ratio):
        raise ValueError("old_logp_from_sampler=True needs an update that never reads batch.old_logp: "
                         "exact_on_policy_ratio, ppo_epochs * num_minibatches == 1 and no entropy-dependent loss")

    def policy_micro(params, mb: RolloutBatch, on_policy: Array, key: Array):
        logp, ent = policy_token_stats(models.policy, params, mb.tokens, mb.attention_mask, chunk_size,
                                       old_logp_from_sampler, temperature, mb.prompt_width)
        lp_sg = jax.lax.stop_gradient(logp)
        old = jnp.where(on_policy, lp_sg, mb.old_logp) if exact_on_policy_ratio else mb.old_logp
        out = losses.policy_loss(alg, logp, old, mb.advantages, mb.response_mask,
                                 segment_ids=mb.segment_ids, entropy=mb.entropy if alg.uses_entropy else None,
                                 ref_logp=mb.ref_logp if alg.kl_beta > 0 else None, entropy_stats=mb.entropy_stats,
                                 rng=key if alg.uses_rng else None, entropy_threshold=mb.entropy_threshold)
        valid = mb.response_mask.astype(bool)
        extra = {}
        if old_logp_from_sampler:  # on-policy by construction: this forward is the behaviour policy's
            drift = jnp.abs(lp_sg - mb.old_logp)
            extra = {"sampler_logp_abs_diff": _masked_mean(drift, valid),
                     "sampler_logp_abs_diff_max": _masked_max(drift, valid),
                     "old_entropy_mean": _masked_mean(jax.lax.stop_gradient(ent), valid)}
        else:
            lr = jnp.clip(lp_sg - mb.old_logp, -alg.log_ratio_clamp, alg.log_ratio_clamp)
            dev = _masked_max(jnp.abs(jnp.exp(lr) - 1.0), valid)
            extra = {"onpolicy_ratio_dev_max": jnp.where(on_policy, dev, 0.0)}
        out = dataclasses.replace(out, metrics={**out.metrics, **{k: v.astype(_F32) for k, v in extra.items()}})
        return out.loss_sum, out

    def critic_micro(critic_params, mb: RolloutBatch):
        out = critic_outputs(models, critic_params, mb.tokens, mb.attention_mask, mb.last_prompt_index,
                             mb.prompt_width)
        if models.critic_kind == "token":
            s, d = losses.clipped_value_loss(out, mb.old_values, mb.returns, mb.response_mask, alg.value_clip)
        else:
            s, d = losses.bce_critic_loss(out, mb.rewards)
        return alg.value_coef * s, d

    def minibatch_step(state: TrainState, mb: RolloutBatch, on_policy: Array, mb_key: Array):
        n_micro = mb.tokens.shape[0] // micro_rows
        rows, stats = split_globals(mb)
        micro = jax.tree.map(lambda x: _micro_split(x, n_micro), rows)

        def grads_of(m: RolloutBatch, i: Array) -> dict:
            m = with_globals(m, stats)
            (s, out), g = jax.value_and_grad(policy_micro, has_aux=True)(state.params, m, on_policy,
                                                                         jax.random.fold_in(mb_key, i))
            r = {"g": g, "s": s, "d": out.denominator, "metrics": out.metrics, "w": out.num_tokens}
            if has_critic:
                (cs, cd), cg = jax.value_and_grad(critic_micro, has_aux=True)(state.critic_params, m)
                r.update(cg=cg, cs=cs, cd=cd)
            return r

        def add(acc: dict, r: dict) -> dict:  # gradients summed in float32 whatever the parameter dtype
            out = {k: acc[k] + r[k] for k in ("s", "d", "w", "cs", "cd") if k in r}
            out["metrics"] = _merge(acc["metrics"], r["metrics"], r["w"])
            out["g"] = _accumulate(acc["g"], r["g"])
            if has_critic:
                out["cg"] = _accumulate(acc["cg"], r["cg"])
            return out

        # The first micro-batch starts the sums (no zero-filled accumulator to keep alive beside
        # them); the others are a scan, and there is none when the minibatch is one micro-batch.
        first = grads_of(jax.tree.map(lambda x: x[0], micro), jnp.asarray(0))
        acc = jax.tree.map(lambda x: x.astype(_F32), {**first, "metrics": _merge({}, first["metrics"], first["w"])})
        if n_micro > 1:
            rest = jax.tree.map(lambda x: x[1:], micro)
            acc, _ = jax.lax.scan(lambda a, xs: (add(a, grads_of(*xs)), None), acc,
                                  (rest, jnp.arange(1, n_micro)))
        g, s, d, metrics, w = acc["g"], acc["s"], acc["d"], acc["metrics"], acc["w"]
        cg, cs, cd = (acc["cg"], acc["cs"], acc["cd"]) if has_critic else (None, None, None)
        denom = jnp.maximum(d, 1.0)
        grads = jax.tree.map(lambda x: x / denom, g)
        loss = s / denom
        finite = jnp.isfinite(loss) & _all_finite(grads)
        updates, new_opt = policy_tx.update(grads, state.opt_state, state.params)
        new_opt = _same_dtypes(new_opt, state.opt_state)
        new_params = optax.apply_updates(state.params, updates)
        finite = finite & _all_finite(new_params)  # e.g. an lr that overflows: skipped like a bad gradient
        out_metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **_finalise(metrics, w)}
        if has_critic:
            cdenom = jnp.maximum(cd, 1.0)
            cgrads = jax.tree.map(lambda x: x / cdenom, cg)
            finite = finite & jnp.isfinite(cs) & _all_finite(cgrads)
            cupdates, new_copt = critic_tx.update(cgrads, state.critic_opt_state, state.critic_params)
            new_copt = _same_dtypes(new_copt, state.critic_opt_state)
            new_cparams = optax.apply_updates(state.critic_params, cupdates)
            finite = finite & _all_finite(new_cparams)
            out_metrics["critic_loss"] = cs / cdenom
            out_metrics["critic_grad_norm"] = optax.tree.norm(cgrads)
        keep = lambda new, old, ok=finite: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        policy_ok = finite & (state.step >= alg.critic_warmup_steps)  # critic warm-up: the policy waits
        state = state.replace(params=keep(new_params, state.params, policy_ok),
                              opt_state=keep(new_opt, state.opt_state, policy_ok))
        if has_critic:
            state = state.replace(critic_params=keep(new_cparams, state.critic_params),
                                  critic_opt_state=keep(new_copt, state.critic_opt_state))
        out_metrics["skipped"] = (~finite).astype(_F32)
        return state, out_metrics

    def update(state: TrainState, batch: RolloutBatch):
        n = batch.tokens.shape[0]
        n_mb = alg.num_minibatches
        key, shuffle_key = jax.random.split(state.key)
        loss_key = jax.random.fold_in(state.key, 0x5EED)  # Clip-Cov's picks; independent of the shuffle
        all_metrics = []
        for epoch in range(alg.ppo_epochs):
            idx = minibatch_rows(shuffle_key, epoch, n, n_mb)  # [n_mb, n // n_mb]: a partition of the rows
            rows, stats = split_globals(batch)
            shuffled = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), rows)
            epoch_key = jax.random.fold_in(loss_key, epoch)

            def mb_body(st, xs, epoch=epoch, epoch_key=epoch_key):
                mb, j = xs
                on_policy = (j == 0) & (epoch == 0)  # the parameters that produced the batch
                return minibatch_step(st, with_globals(mb, stats), on_policy,
                                      jax.random.fold_in(epoch_key, j))

            state, metrics = jax.lax.scan(mb_body, state, (shuffled, jnp.arange(n_mb)))
            all_metrics.append(metrics)
        stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs), *all_metrics)  # [epochs * minibatches]
        summary = {}
        for k, v in stacked.items():
            if k.endswith("_min"):
                summary[k] = jnp.min(v)
            elif k.endswith("_max"):
                summary[k] = jnp.max(v)
            elif k == "skipped":
                summary[k] = jnp.sum(v)
            else:
                summary[k] = jnp.mean(v)
        summary["updates"] = jnp.asarray(stacked["loss"].shape[0], _F32)
        state = state.replace(step=state.step + 1, rng=jax.random.key_data(key))
        return state, summary

    return jax.jit(update, donate_argnums=(0,) if donate else ())
