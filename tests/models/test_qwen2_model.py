"""Flax Qwen2 model mechanics: split/merge under jit, remat, masks, positions, config errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sspo_jax.models import (
    ModelError,
    Qwen2Config,
    Qwen2ForCausalLM,
    positions_from_mask,
    token_logprobs_from_hidden,
)
from tests.models.qwen2_fixtures import TINY, padded_batch, random_policy, tiny_config


def _batch(vocab, seed=0):
    return padded_batch(np.random.default_rng(seed), vocab, [3, 5, 1], [4, 1, 5], 5, 5)


def test_positions_from_mask():
    mask = jnp.array([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(positions_from_mask(mask),
                                  [[0, 0, 0, 1, 2, 2], [0, 1, 2, 3, 3, 3]])


def test_split_once_and_merge_inside_jit():
    model = random_policy(0)
    graphdef, params = nnx.split(model, nnx.Param)
    assert set(nnx.to_flat_state(params).to_nested_state().keys()) == {"model", "lm_head"}
    tokens, mask, _ = _batch(model.config.vocab_size)
    fwd = jax.jit(lambda p, t, m: nnx.merge(graphdef, p)(t, m))
    np.testing.assert_allclose(fwd(params, tokens, mask), model(tokens, mask), atol=1e-5)


def test_padding_ids_and_padded_rows_do_not_matter():
    model = random_policy(1)
    tokens, mask, _ = _batch(model.config.vocab_size)
    other = np.where(mask == 1, tokens, (tokens + 17) % model.config.vocab_size)
    a, b = np.asarray(model(tokens, mask)), np.asarray(model(other, mask))
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a[mask == 1], b[mask == 1], atol=1e-5)


@pytest.mark.parametrize("remat,scan_layers", [(True, True), (False, False), (True, False)])
def test_remat_and_unrolled_layers_give_same_values_and_gradients(remat, scan_layers):
    """`remat` and `scan_layers=False` change the program, never the numbers."""
    tokens, mask, _ = _batch(TINY["vocab_size"], 2)

    def loss_and_grad(remat, scan_layers=True):
        model = Qwen2ForCausalLM(tiny_config(), rngs=nnx.Rngs(0), remat=remat, scan_layers=scan_layers)
        graphdef, params = nnx.split(model, nnx.Param)

        def loss(p):
            m = nnx.merge(graphdef, p)
            logp, ent = m.token_logprobs_and_entropy(tokens, mask, chunk_size=3)
            return jnp.sum(logp * mask) + 0.1 * jnp.sum(ent * mask)

        return jax.jit(jax.value_and_grad(loss))(params)

    (l0, g0), (l1, g1) = loss_and_grad(False), loss_and_grad(remat, scan_layers)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)


def test_hidden_state_path_equals_full_logits():
    model = random_policy(3)
    tokens, mask, _ = _batch(model.config.vocab_size, 3)
    logits = np.asarray(model(tokens, mask), np.float64)
    logq = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    want = np.take_along_axis(logq[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    hidden = model.hidden_states(tokens, mask)
    logp, _ = token_logprobs_from_hidden(hidden, model.unembed_weight(), tokens, chunk_size=4)
    np.testing.assert_allclose(logp[:, 1:], want, atol=1e-5)
    logp2, _ = model.token_logprobs_and_entropy(tokens, mask, chunk_size=4)
    np.testing.assert_allclose(logp2, logp, atol=1e-6)


@pytest.mark.parametrize("change,message", [
    (dict(num_key_value_heads=3), "multiple of 'num_key_value_heads'"),
    (dict(hidden_size=30), "not divisible by 'num_attention_heads'"),
    (dict(head_dim=7), "'head_dim' must be even"),
    (dict(vocab_size=0), "'vocab_size' must be a positive integer"),
    (dict(rope_theta=-1.0), "'rope_theta' must be a positive number"),
])
def test_config_validation_names_the_key(change, message):
    with pytest.raises(ModelError, match=message):
        tiny_config(**change)


def test_config_reads_both_rope_layouts():
    base = dict(model_type="qwen2", vocab_size=64, hidden_size=32, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)
    new = Qwen2Config.from_hf_dict({**base, "rope_parameters": {"rope_type": "default",
                                                                "rope_theta": 5e5}})
    old = Qwen2Config.from_hf_dict({**base, "rope_theta": 5e5})
    assert new.rope_theta == old.rope_theta == 5e5
    assert new.head_dim == 8
    with pytest.raises(ModelError, match="sliding-window"):
        Qwen2Config.from_hf_dict({**base, "use_sliding_window": True})
    with pytest.raises(ModelError, match="RoPE type 'yarn'"):
        Qwen2Config.from_hf_dict({**base, "rope_parameters": {"rope_type": "yarn",
                                                              "rope_theta": 1e4}})
    with pytest.raises(ModelError, match="lacks required key.*intermediate_size"):
        Qwen2Config.from_hf_dict({k: v for k, v in base.items() if k != "intermediate_size"})
