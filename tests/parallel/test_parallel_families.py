"""Qwen3 and Llama on a (2, 2, 2) mesh of 8 simulated devices: the sharding rules place their
parameters (q/k norms included), the loader reads a checkpoint onto those shards, and a forward
pass gives the logits of one device."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from sspo_jax.models import from_pretrained, save_pretrained
from sspo_jax.parallel import MeshConfig, batch_sharding, make_mesh, shard_params, sharding_for
from tests.models.qwen2_fixtures import FAMILIES, padded_batch, random_policy


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_forward_on_a_mesh_equals_one_device(family, tmp_path):
    model = random_policy(3, **FAMILIES[family], tie_word_embeddings=False)
    graphdef, params = nnx.split(model, nnx.Param)
    tokens, mask, _ = padded_batch(np.random.default_rng(0), model.config.vocab_size,
                                   [5, 2, 7, 1], [4, 6, 0, 3], 7, 6)
    fwd = jax.jit(lambda p, t, m: nnx.merge(graphdef, p)(t, m))
    expected = np.asarray(fwd(params, tokens, mask))

    mesh = make_mesh(MeshConfig(2, 2, 2))
    placed = shard_params(params, mesh)
    layers = placed["model"]["layers"]
    assert layers["q_kernel"][...].sharding.spec == P(None, "fsdp", "tensor")
    assert layers["o_kernel"][...].sharding.spec == P(None, "tensor", "fsdp")
    assert placed["lm_head"][...].sharding.spec == P("tensor", "fsdp")
    if family == "qwen3":
        assert layers["q_norm"][...].sharding.spec == P(None, None)
        assert layers["k_norm"][...].sharding.is_fully_replicated
    rows = batch_sharding(mesh, 2)
    got = fwd(placed, jax.device_put(tokens, rows), jax.device_put(mask, rows))
    assert len(got.sharding.device_set) == 8
    keep = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[keep], expected[keep], rtol=1e-5, atol=1e-5)

    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path, sharding_for=sharding_for(mesh))
    _, loaded_params = nnx.split(loaded, nnx.Param)
    for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(loaded_params)):
        assert a.sharding == b.sharding
    got = fwd(loaded_params, jax.device_put(tokens, rows), jax.device_put(mask, rows))
    np.testing.assert_allclose(np.asarray(got)[keep], expected[keep], rtol=1e-5, atol=1e-5)
