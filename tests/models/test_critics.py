"""Critics: token value model (PPO) and prompt-only critic (SPPO) initialised from a policy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sspo_jax.models import PromptCritic, TokenValueModel, from_pretrained
from tests.models.qwen2_fixtures import padded_batch, write_checkpoint

P, R = 5, 4


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy")
    write_checkpoint(path, seed=0, tie_word_embeddings=False)
    return path


def _batch(vocab, seed=0):
    return padded_batch(np.random.default_rng(seed), vocab, [5, 2, 3], [4, 1, 0], P, R)


def test_prompt_critic_ignores_response_tokens(policy_dir):
    critic = PromptCritic.from_policy_checkpoint(policy_dir, seed=1)
    graphdef, params = nnx.split(critic, nnx.Param)
    tokens, mask, prompt_mask = _batch(critic.config.vocab_size)
    fwd = jax.jit(lambda p, t, m, pm: nnx.merge(graphdef, p)(t, m, prompt_mask=pm))
    base = np.asarray(fwd(params, tokens, mask, prompt_mask))
    assert base.shape == (3,) and base.dtype == np.float32 and np.isfinite(base).all()
    changed = tokens.copy()
    changed[:, P:] = (changed[:, P:] + 1 + np.arange(R)) % critic.config.vocab_size
    other_mask = mask.copy()
    other_mask[:, P:] = 1  # longer responses too
    np.testing.assert_allclose(fwd(params, changed, other_mask, prompt_mask), base, atol=1e-6)
    by_index = critic(tokens, mask, last_prompt_index=jnp.full((3,), P - 1))
    np.testing.assert_allclose(by_index, base, atol=1e-6)
    # the prompt alone gives the same value
    np.testing.assert_allclose(critic(tokens[:, :P], mask[:, :P],
                                      last_prompt_index=jnp.full((3,), P - 1)), base, atol=1e-5)
    # ... while changing a prompt token does change it
    prompt_changed = tokens.copy()
    prompt_changed[:, P - 1] = (prompt_changed[:, P - 1] + 1) % critic.config.vocab_size
    assert not np.allclose(fwd(params, prompt_changed, mask, prompt_mask), base, atol=1e-7)
    with pytest.raises(ValueError, match="exactly one"):
        critic(tokens, mask)


def test_token_value_model_shapes_and_masks(policy_dir):
    critic = TokenValueModel.from_policy_checkpoint(policy_dir, seed=2)
    tokens, mask, _ = _batch(critic.config.vocab_size, 1)
    values = np.asarray(critic(tokens, mask))
    assert values.shape == tokens.shape and values.dtype == np.float32
    valid = np.zeros_like(mask, bool)
    valid[:, 1:] = (mask[:, 1:] == 1) & (mask[:, :-1] == 1)
    assert np.all(values[~valid] == 0.0)
    assert np.all(values[valid] != 0.0)
    # values[t] reads hidden state t - 1: same hidden states the policy uses for logp[t]
    policy = from_pretrained(policy_dir)
    hidden = policy.hidden_states(tokens, mask)
    want = np.asarray(critic.value_head(hidden[:, :-1]))
    np.testing.assert_allclose(values[:, 1:][valid[:, 1:]], want[valid[:, 1:]], atol=1e-6)


def test_backbone_loaded_and_head_fresh_and_seeded(policy_dir):
    policy = from_pretrained(policy_dir)
    a = TokenValueModel.from_policy_checkpoint(policy_dir, seed=3)
    b = TokenValueModel.from_policy_checkpoint(policy_dir, seed=3)
    c = PromptCritic.from_policy_checkpoint(policy_dir, seed=4)
    np.testing.assert_array_equal(a.model.layers.q_kernel[...], policy.model.layers.q_kernel[...])
    np.testing.assert_array_equal(a.value_head.kernel[...], b.value_head.kernel[...])
    assert not np.allclose(a.value_head.kernel[...], c.value_head.kernel[...])
    kernel = np.asarray(a.value_head.kernel[...])
    assert kernel.shape == (a.config.hidden_size,) and 0 < np.abs(kernel).max() < 0.01
    assert float(a.value_head.bias[...]) == 0.0
    _, params = nnx.split(a, nnx.Param)
    assert set(params.keys()) == {"model", "value_head"}  # no LM head in a critic
