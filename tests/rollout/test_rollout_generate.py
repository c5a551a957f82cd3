"""The rollout engine: greedy exactness, sampling distribution, stop tokens, buckets, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sspo_jax.rollout import SamplingConfig, SamplingError, generate, processed_logits, sample_token, trace_count
from tests.models.qwen2_fixtures import random_policy

VOCAB = 256


@pytest.fixture(scope="module")
def policy():
    return random_policy(3)


def _prompts():
    tokens = np.array([[0, 0, 0, 17, 42, 99], [7, 8, 9, 10, 11, 12], [0, 0, 0, 0, 0, 200]], np.int32)
    mask = (np.arange(6)[None, :] >= np.array([3, 0, 5])[:, None]).astype(np.int32)
    return tokens, mask


def _full_forward_logits(model, result):
    return np.asarray(model(jnp.asarray(result.tokens), attention_mask=jnp.asarray(result.attention_mask)))


def test_greedy_equals_argmax_of_full_forward(policy):
    tokens, mask = _prompts()
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.0, prompt_buckets=(8,))
    out = generate(policy, tokens, mask, cfg, jax.random.key(0))
    assert out.tokens.shape == (3, 18) and out.prompt_len == 8
    logits = _full_forward_logits(policy, out)
    p = out.prompt_len
    for i in range(3):
        predicted = np.argmax(logits[i, p - 1:p + 9], axis=-1)
        np.testing.assert_array_equal(np.asarray(out.tokens)[i, p:], predicted)
    assert np.all(np.asarray(out.truncated)) and int(out.num_steps) == 10
    np.testing.assert_array_equal(np.asarray(out.sampler_logp), 0.0)  # greedy is a point mass


def test_mixed_prompt_lengths_equal_each_prompt_alone(policy):
    tokens, mask = _prompts()
    cfg = SamplingConfig(max_new_tokens=6, temperature=0.0, prompt_buckets=(8,))
    together = np.asarray(generate(policy, tokens, mask, cfg, jax.random.key(0)).responses)
    for i in range(3):
        real = tokens[i][mask[i].astype(bool)][None]
        alone = np.asarray(generate(policy, real, np.ones_like(real), cfg, jax.random.key(0)).responses)
        np.testing.assert_array_equal(together[i], alone[0])


def test_stop_token_ends_row_and_masks_the_rest(policy):
    tokens, mask = _prompts()
    base = SamplingConfig(max_new_tokens=8, temperature=0.0, prompt_buckets=(8,))
    free = np.asarray(generate(policy, tokens, mask, base, jax.random.key(0)).responses)
    stop = int(free[0, 2])  # row 0 stops at its third token (or earlier if it occurs before)
    out = generate(policy, tokens, mask, base.replace(eos_token_ids=(stop,)), jax.random.key(0))
    resp, rmask = np.asarray(out.responses), np.asarray(out.response_mask)[:, out.prompt_len:]
    for i in range(3):
        hits = np.flatnonzero(free[i] == stop)
        length = hits[0] + 1 if hits.size else 8
        assert int(out.response_lengths[i]) == length
        assert bool(out.truncated[i]) == (hits.size == 0)
        np.testing.assert_array_equal(rmask[i], np.arange(8) < length)  # the stop token is included
        np.testing.assert_array_equal(resp[i, :length], free[i, :length])
        assert np.all(resp[i, length:] == base.pad_token_id)
    assert not bool(out.truncated[0])


def test_early_exit_when_every_row_stopped(policy):
    tokens, mask = _prompts()
    base = SamplingConfig(max_new_tokens=12, temperature=0.0, prompt_buckets=(8,))
    free = np.asarray(generate(policy, tokens, mask, base, jax.random.key(0)).responses)
    stops = tuple(int(free[i, 0]) for i in range(3))
    out = generate(policy, tokens, mask, base.replace(eos_token_ids=stops), jax.random.key(0))
    assert int(out.num_steps) == 1
    np.testing.assert_array_equal(np.asarray(out.response_lengths), 1)


def test_sampler_logp_is_the_tempered_log_softmax(policy):
    tokens, mask = _prompts()
    cfg = SamplingConfig(max_new_tokens=7, temperature=0.7, prompt_buckets=(8,))
    out = generate(policy, tokens, mask, cfg, jax.random.key(5))
    logits = _full_forward_logits(policy, out) / 0.7
    logsm = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    toks = np.asarray(out.tokens)
    rm = np.asarray(out.response_mask)
    for i in range(3):
        for t in np.flatnonzero(rm[i]):
            np.testing.assert_allclose(out.sampler_logp[i, t], logsm[i, t - 1, toks[i, t]], rtol=1e-4, atol=1e-5)


def test_same_key_same_result_and_groups_sample_independently(policy):
    tokens, mask = _prompts()
    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0, prompt_buckets=(8,))
    a = generate(policy, tokens, mask, cfg, jax.random.key(1), group_size=4)
    b = generate(policy, tokens, mask, cfg, jax.random.key(1), group_size=4)
    c = generate(policy, tokens, mask, cfg, jax.random.key(2), group_size=4)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
    assert a.tokens.shape[0] == 12
    prompts = np.asarray(a.tokens)[:, :a.prompt_len].reshape(3, 4, -1)
    assert all(np.all(prompts[g] == prompts[g, :1]) for g in range(3)), "groups are consecutive rows"
    responses = np.asarray(a.responses).reshape(3, 4, -1)
    assert len({r.tobytes() for r in responses[1]}) > 1, "rows of a group sample independently"


def test_no_retrace_within_a_bucket(policy):
    cfg = SamplingConfig(max_new_tokens=4, temperature=1.0, prompt_buckets=(8, 16))
    rng = np.random.default_rng(0)

    def call(p_len, seed):
        toks = rng.integers(0, VOCAB, (2, p_len)).astype(np.int32)
        return generate(policy, toks, np.ones_like(toks), cfg, jax.random.key(seed))

    call(5, 0)
    before = trace_count()
    call(7, 1)
    call(8, 2)
    assert trace_count() == before, "prompt lengths 5, 7 and 8 share the bucket 8"
    call(9, 3)
    assert trace_count() == before + 1, "length 9 needs the bucket 16"


def test_sample_token_matches_softmax_distribution():
    logits = jnp.asarray([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    n = 40_000
    cfg = SamplingConfig(temperature=0.8)
    keys = jax.random.split(jax.random.key(0), n)
    toks, lps = jax.vmap(lambda k: sample_token(logits, k, cfg))(keys)
    toks = np.asarray(toks)[:, 0]
    p = np.asarray(jax.nn.softmax(logits[0] / 0.8))
    freq = np.bincount(toks, minlength=6) / n
    # 5 standard errors per category: a false failure has probability < 1e-5 for this fixed seed.
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n)), (freq, p)
    np.testing.assert_allclose(np.asarray(lps)[:, 0], np.log(p[toks]), rtol=1e-5)


@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (0, 0.6), (4, 0.9)])
def test_top_k_and_top_p_never_leave_the_allowed_set(top_k, top_p):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(5, 50)) * 2, jnp.float32)
    cfg = SamplingConfig(temperature=1.0, top_k=top_k, top_p=top_p)
    allowed = np.isfinite(np.asarray(processed_logits(logits, cfg)))
    for r in range(5):  # the allowed set: top-k, then the smallest prefix reaching mass top_p
        order = np.argsort(-np.asarray(logits[r]))
        k = top_k or 50
        probs = np.exp(np.asarray(logits[r])[order[:k]] - np.asarray(logits[r])[order[0]])
        probs /= probs.sum()
        n_keep = int(np.searchsorted(np.cumsum(probs), top_p - 1e-7) + 1) if top_p < 1 else k
        assert set(np.flatnonzero(allowed[r])) == set(order[:min(n_keep, k)].tolist())
    keys = jax.random.split(jax.random.key(1), 2000)
    toks = np.asarray(jax.vmap(lambda k: sample_token(logits, k, cfg)[0])(keys))
    for r in range(5):
        assert set(np.unique(toks[:, r])) <= set(np.flatnonzero(allowed[r]))


def test_generate_respects_top_k(policy):
    tokens, mask = _prompts()
    cfg = SamplingConfig(max_new_tokens=5, temperature=1.5, top_k=2, prompt_buckets=(8,))
    out = generate(policy, tokens, mask, cfg, jax.random.key(9), group_size=3)
    logits = _full_forward_logits(policy, out)
    toks, rm = np.asarray(out.tokens), np.asarray(out.response_mask)
    for i in range(toks.shape[0]):
        for t in np.flatnonzero(rm[i]):
            assert toks[i, t] in np.argsort(-logits[i, t - 1])[:2]


def test_bf16_cache_runs_and_mostly_agrees(policy):
    tokens, mask = _prompts()
    cfg = SamplingConfig(max_new_tokens=6, temperature=0.0, prompt_buckets=(8,))
    f32 = np.asarray(generate(policy, tokens, mask, cfg, jax.random.key(0)).responses)
    b16 = np.asarray(generate(policy, tokens, mask, cfg.replace(cache_dtype="bfloat16"), jax.random.key(0)).responses)
    assert b16.shape == f32.shape and np.mean(b16[:, :2] == f32[:, :2]) >= 0.5


def test_errors_name_the_problem(policy):
    tokens, mask = _prompts()
    with pytest.raises(SamplingError, match="no real token"):
        generate(policy, tokens, np.zeros_like(mask), SamplingConfig(), jax.random.key(0))
    with pytest.raises(SamplingError, match="largest prompt bucket 4"):
        generate(policy, tokens, mask, SamplingConfig(prompt_buckets=(4,)), jax.random.key(0))
    with pytest.raises(SamplingError, match="vocab_size 256"):
        generate(policy, tokens, mask, SamplingConfig(eos_token_ids=(1000,)), jax.random.key(0))
    with pytest.raises(SamplingError, match="temperature"):
        SamplingConfig(temperature=-1.0)
    with pytest.raises(SamplingError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(SamplingError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)
