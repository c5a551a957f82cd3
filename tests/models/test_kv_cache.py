"""KV-cache decoding reproduces the full forward pass at every step (fp32 and bf16 caches)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sspo_jax.models import KVCache, decode_step, init_cache, prefill
from tests.models.qwen2_fixtures import padded_batch, random_policy

PROMPT_W, RESP_W = 6, 5


def _setup(seed, **overrides):
    model = random_policy(seed, **overrides)
    graphdef, params = nnx.split(model, nnx.Param)
    rng = np.random.default_rng(seed)
    # every response runs the full width: decoding feeds real tokens at each step
    tokens, mask, _ = padded_batch(rng, model.config.vocab_size, prompt_lens=[6, 2, 4],
                                   resp_lens=[RESP_W] * 3, prompt_width=PROMPT_W,
                                   resp_width=RESP_W)
    return model, graphdef, params, tokens, mask


@pytest.mark.parametrize("overrides", [dict(), dict(num_key_value_heads=1,
                                                    tie_word_embeddings=True)],
                         ids=["gqa2_untied", "gqa4_tied"])
def test_decode_matches_full_forward_every_step(overrides):
    model, graphdef, params, tokens, mask = _setup(0, **overrides)
    full = jax.jit(lambda p, t, m: nnx.merge(graphdef, p)(t, m))(params, tokens, mask)

    pre = jax.jit(lambda p, t, m, c: prefill(nnx.merge(graphdef, p), t, m, c))
    step = jax.jit(lambda p, t, c: decode_step(nnx.merge(graphdef, p), t, c), donate_argnums=2)
    cache = init_cache(model.config, batch=3, max_len=PROMPT_W + RESP_W + 3)
    logits, cache = pre(params, tokens[:, :PROMPT_W], mask[:, :PROMPT_W], cache)
    assert logits.shape == (3, model.config.vocab_size)
    np.testing.assert_allclose(logits, full[:, PROMPT_W - 1], atol=1e-4)
    for i in range(RESP_W):
        logits, cache = step(params, jnp.asarray(tokens[:, PROMPT_W + i]), cache)
        np.testing.assert_allclose(logits, full[:, PROMPT_W + i], atol=1e-4)
    assert int(cache.index) == PROMPT_W + RESP_W
    np.testing.assert_array_equal(cache.positions, mask.sum(1))
    np.testing.assert_array_equal(cache.mask[:, :PROMPT_W + RESP_W], mask.astype(bool))
    assert not np.asarray(cache.mask[:, PROMPT_W + RESP_W:]).any()


def test_bf16_cache_close_to_full_forward():
    model, graphdef, params, tokens, mask = _setup(1)
    full = np.asarray(jax.jit(lambda p, t, m: nnx.merge(graphdef, p)(t, m))(params, tokens, mask))
    pre = jax.jit(lambda p, t, m, c: prefill(nnx.merge(graphdef, p), t, m, c))
    step = jax.jit(lambda p, t, c: decode_step(nnx.merge(graphdef, p), t, c))
    cache = init_cache(model.config, 3, PROMPT_W + RESP_W, dtype=jnp.bfloat16)
    logits, cache = pre(params, tokens[:, :PROMPT_W], mask[:, :PROMPT_W], cache)
    assert cache.k.dtype == jnp.bfloat16
    for i in range(RESP_W):
        logits, cache = step(params, jnp.asarray(tokens[:, PROMPT_W + i]), cache)
        np.testing.assert_allclose(logits, full[:, PROMPT_W + i], atol=0.05)


def test_greedy_decode_inside_while_loop_traces_once():
    model, graphdef, params, tokens, mask = _setup(2)
    steps = 4
    traces = []

    @functools.partial(jax.jit, donate_argnums=(1,))
    def generate(params, cache: KVCache, prompt, prompt_mask):
        traces.append(1)
        m = nnx.merge(graphdef, params)
        logits, cache = prefill(m, prompt, prompt_mask, cache)
        out = jnp.zeros((prompt.shape[0], steps), jnp.int32)

        def body(state):
            i, logits, cache, out = state
            tok = jnp.argmax(logits, -1).astype(jnp.int32)
            logits, cache = decode_step(m, tok, cache)
            return i + 1, logits, cache, out.at[:, i].set(tok)

        _, _, cache, out = jax.lax.while_loop(lambda s: s[0] < steps, body,
                                              (0, logits, cache, out))
        return out, cache

    for _ in range(2):
        cache = init_cache(model.config, 3, PROMPT_W + steps)
        out, cache = generate(params, cache, tokens[:, :PROMPT_W], mask[:, :PROMPT_W])
    assert len(traces) == 1
    # the greedy continuation agrees with the full forward over prompt + generated tokens
    rows = np.concatenate([tokens[:, :PROMPT_W], np.asarray(out)], 1)
    rmask = np.concatenate([mask[:, :PROMPT_W], np.ones((3, steps), np.int32)], 1)
    full = np.asarray(model(rows, rmask))
    np.testing.assert_array_equal(np.argmax(full[:, PROMPT_W - 1:-1], -1), np.asarray(out))
