"""One batch vs micro-batches vs 8 device shards: identical loss and gradient for every mode.

A parameter vector theta (replicated, like model weights) produces the log-probs
``logp = old_logp + theta[t] * x[b, t]``; the loss is formed from (sum, denominator) pairs summed
over micro-batches or devices before dividing (PITFALLS.md 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from sspo_jax.algorithms import policy_loss, presets, segment_entropy_stats, segment_ids
from sspo_jax.algorithms.config import LOSS_AGG_MODES

from .batches import random_batch, toy_table

B, T = 8, 12


def _setup(name, mode):
    batch = random_batch(42, b=B, t=T, scale=0.4)
    cfg = presets.get(name, loss_agg_mode=mode)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(B, T)), jnp.float32)
    theta = jnp.asarray(rng.normal(size=(T,)) * 0.3, jnp.float32)
    seg = segment_ids(jnp.asarray(batch.tokens), jnp.asarray(batch.mask), toy_table(), cfg.segmentation)
    arrays = dict(old=jnp.asarray(batch.old_logp), ref=jnp.asarray(batch.ref_logp), ent=jnp.asarray(batch.entropy),
                  adv=jnp.asarray(batch.adv), mask=jnp.asarray(batch.mask), seg=seg, x=x)
    stats = segment_entropy_stats(arrays["ent"], arrays["mask"], seg)  # global, computed once per rollout
    return cfg, theta, arrays, stats


def _sum_and_denom(cfg, theta, a, stats):
    logp = a["old"] + theta[None, :] * a["x"]
    out = policy_loss(cfg, logp, a["old"], a["adv"], a["mask"], segment_ids=a["seg"], entropy=a["ent"],
                      ref_logp=a["ref"], entropy_stats=stats)
    return out.loss_sum, out.denominator


def _full(cfg, theta, arrays, stats):
    def loss(th):
        s, d = _sum_and_denom(cfg, th, arrays, stats)
        return s / d
    return jax.value_and_grad(loss)(theta)


def _micro(cfg, theta, arrays, stats, n_micro):
    size = B // n_micro
    total_sum, total_den, total_grad = 0.0, 0.0, jnp.zeros_like(theta)
    for i in range(n_micro):
        part = {k: v[i * size:(i + 1) * size] for k, v in arrays.items()}
        s, d = _sum_and_denom(cfg, theta, part, stats)
        g = jax.grad(lambda th: _sum_and_denom(cfg, th, part, stats)[0])(theta)
        total_sum, total_den, total_grad = total_sum + s, total_den + d, total_grad + g
    return total_sum / total_den, total_grad / total_den


def _devices(cfg, theta, arrays, stats):
    """Data parallel over 8 devices: each shard sums its own (sum, denominator); psum; divide."""
    mesh = Mesh(np.asarray(jax.devices()[:8]), ("data",))
    keys = sorted(arrays)

    def per_device(th, *shards):
        s, d = _sum_and_denom(cfg, th, dict(zip(keys, shards)), stats)
        return jax.lax.psum(s, "data"), jax.lax.psum(d, "data")

    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(),) + (P("data"),) * len(keys), out_specs=(P(), P()))

    def loss(th):
        s, d = sharded(th, *[arrays[k] for k in keys])
        return s / d

    return jax.jit(jax.value_and_grad(loss))(theta)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("name", ["sspo", "grpo", "gspo"])
def test_micro_batches_and_devices_match_one_batch(name, mode):
    assert jax.device_count() >= 8, "tests/conftest.py must provide 8 simulated devices"
    cfg, theta, arrays, stats = _setup(name, mode)
    loss, grad = _full(cfg, theta, arrays, stats)
    assert float(jnp.max(jnp.abs(grad))) > 0
    for n_micro in (2, 4):
        l_m, g_m = _micro(cfg, theta, arrays, stats, n_micro)
        np.testing.assert_allclose(l_m, loss, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g_m, grad, rtol=1e-5, atol=1e-7)
    l_d, g_d = _devices(cfg, theta, arrays, stats)
    np.testing.assert_allclose(l_d, loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g_d, grad, rtol=1e-5, atol=1e-7)


def test_rescaled_micro_batch_means_are_not_the_batch_mean():
    """The bug this design prevents: averaging per-micro-batch token means is biased."""
    cfg, theta, arrays, stats = _setup("dapo", "token-mean")
    loss, _ = _full(cfg, theta, arrays, stats)
    halves = [{k: v[i * 4:(i + 1) * 4] for k, v in arrays.items()} for i in range(2)]
    naive = np.mean([float(s / d) for s, d in (_sum_and_denom(cfg, theta, h, stats) for h in halves)])
    assert abs(naive - float(loss)) > 1e-4
