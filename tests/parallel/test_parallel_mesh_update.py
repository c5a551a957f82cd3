"""Meshes over 8 simulated devices: rules, and the update step and the sampler giving the same
results as on one device."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from sspo_jax.algorithms import presets
from sspo_jax.algorithms.config import ConfigError
from sspo_jax.models import Qwen2Config, Qwen2ForCausalLM
from sspo_jax.parallel import MeshConfig, batch_sharding, make_mesh, shard_like, shard_params, spec_for
from sspo_jax.rollout import SamplingConfig, generate
from sspo_jax.train.state import TrainState
from sspo_jax.train.step import Models, make_update_fn
from tests.train.test_train_update import N, _batch

MESHES = [(8, 1, 1), (2, 4, 1), (1, 4, 2), (2, 2, 2)]


@pytest.fixture(scope="module")
def policy():
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=10_000.0, tie_word_embeddings=True)
    return nnx.split(Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0)))


def test_mesh_config_resolution_and_errors():
    assert MeshConfig(data=-1, fsdp=2, tensor=2).resolve(8) == (2, 2, 2)
    assert MeshConfig(data=2, fsdp=4, tensor=1).resolve(8) == (2, 4, 1)
    with pytest.raises(ConfigError, match="= 6 but 8 devices"):
        MeshConfig(data=3, fsdp=2, tensor=1).resolve(8)
    with pytest.raises(ConfigError, match="cannot be split"):
        MeshConfig(data=-1, fsdp=3).resolve(8)
    with pytest.raises(ConfigError, match="at most one axis"):
        MeshConfig(data=-1, fsdp=-1)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_parameter_shardings_follow_the_rules(policy):
    _, params = policy
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    placed = shard_params(params, mesh)
    layers = placed["model"]["layers"]
    assert layers["q_kernel"][...].sharding.spec == P(None, "fsdp", "tensor")
    assert layers["o_kernel"][...].sharding.spec == P(None, "tensor", "fsdp")
    assert layers["down_kernel"][...].sharding.spec == P(None, "tensor", "fsdp")
    assert layers["gate_kernel"][...].sharding.spec == P(None, "fsdp", "tensor")
    assert layers["input_norm"][...].sharding.spec == P(None, None)
    assert placed["model"]["embed"][...].sharding.spec == P("tensor", "fsdp")
    # a dimension the axis does not divide stays whole
    mesh4 = make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))
    assert spec_for(("model", "layers", "k_kernel"), (2, 32, 6), mesh4) == P(None, "fsdp", None)


def _sgd_update(models, alg, params, batch):
    tx = optax.sgd(1.0)
    update = make_update_fn(models, alg, tx, None, chunk_size=4, micro_rows=N // 2, donate=False)
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)), params=params,
                       opt_state=tx.init(params))
    return update, state


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_update_step_on_a_mesh_equals_one_device(policy, shape):
    graphdef, params = policy
    models = Models(policy=graphdef)
    alg = presets.get("sspo")
    batch = _batch(models, params, alg)
    update, state = _sgd_update(models, alg, params, batch)
    expected, m_expected = update(state, batch)

    mesh = make_mesh(MeshConfig(*shape))
    sharded_params = shard_params(params, mesh)
    sharded_state = state.replace(params=sharded_params, opt_state=shard_like(state.opt_state, params, mesh))
    sharded_batch = jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh, x.ndim)) if x.ndim else x, batch)
    got, m_got = update(sharded_state, sharded_batch)
    for a, b in zip(jax.tree.leaves(expected.params), jax.tree.leaves(got.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m_got["loss"], m_expected["loss"], rtol=1e-5, atol=1e-7)
    assert len(jax.tree.leaves(got.params)[0].sharding.device_set) == 8


def _row_blocks(x) -> int:
    """Into how many distinct row ranges the devices split `x`."""
    return len({s.index[0].indices(x.shape[0]) for s in x.addressable_shards})


def _prompts(rows: int):
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, 64, (rows, 6)).astype(np.int32)
    mask = np.ones_like(prompts)
    mask[::3, :2] = 0
    return prompts, mask


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_greedy_sampler_on_a_mesh_equals_one_device(policy, shape):
    """Prompts split over (data, fsdp), parameters by the rules: the same greedy tokens as on one
    device, and the outputs stay split over the batch axes."""
    graphdef, params = policy
    prompts, mask = _prompts(8)
    cfg = SamplingConfig(max_new_tokens=6, temperature=0.0, prompt_buckets=(8,))
    expected = generate((graphdef, params), prompts, mask, cfg, jax.random.key(0))
    mesh = make_mesh(MeshConfig(*shape))
    got = generate((graphdef, shard_params(params, mesh)), prompts, mask, cfg, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(expected.tokens))
    np.testing.assert_array_equal(np.asarray(got.response_mask), np.asarray(expected.response_mask))
    for x in (got.tokens, got.response_mask, got.sampler_logp, got.response_lengths):
        assert _row_blocks(x) == shape[0] * shape[1], x.sharding  # rows split over data x fsdp
        assert len(x.sharding.device_set) == 8


def test_sampling_on_a_mesh_equals_one_device_and_short_batches_are_replicated(policy):
    """Temperature sampling draws the same tokens whatever the split (partitionable threefry), with
    G copies of each prompt; a row count data x fsdp does not divide falls back to whole rows on
    every device."""
    graphdef, params = policy
    prompts, mask = _prompts(4)
    mesh = make_mesh(MeshConfig(2, 2, 2))
    sharded = (graphdef, shard_params(params, mesh))
    cfg = SamplingConfig(max_new_tokens=5, temperature=1.0, prompt_buckets=(8,))
    expected = generate((graphdef, params), prompts, mask, cfg, jax.random.key(3), group_size=2)
    got = generate(sharded, prompts, mask, cfg, jax.random.key(3), group_size=2)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(expected.tokens))
    np.testing.assert_allclose(np.asarray(got.sampler_logp), np.asarray(expected.sampler_logp), rtol=1e-5, atol=1e-5)
    assert _row_blocks(got.tokens) == 4
    greedy = cfg.replace(temperature=0.0)
    odd = generate(sharded, prompts[:3], mask[:3], greedy, jax.random.key(0))  # 3 rows over 4 row shards
    assert odd.tokens.sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(odd.tokens),
                                  np.asarray(generate((graphdef, params), prompts[:3], mask[:3], greedy,
                                                      jax.random.key(0)).tokens))
