"""Each stage of an RL step alone, on tiny records, without a Trainer:
records (rows, widening, concatenation), sampling, scoring (with shaping), dynamic sampling,
preparation (token stats, segments, advantages for every estimator) and the run-dependent settings."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sspo_jax.algorithms import presets
from sspo_jax.data import PromptBatch
from sspo_jax.models import Qwen2Config, Qwen2ForCausalLM
from sspo_jax.rewards import RewardConfig
from sspo_jax.rollout import SamplingConfig
from sspo_jax.train import collect, prepare, sample, score, shaping
from sspo_jax.train.host_rows import HostRows
from sspo_jax.train.records import Rollout, ScoredRollout, concat, take_rows, widen, with_rewards
from sspo_jax.train.state import RolloutBatch, TrainState

P, T = 3, 4  # prompt columns, response columns


def _rollout(n: int, prompt_width: int = P, seed: int = 0) -> Rollout:
    rng = np.random.default_rng(seed)
    width = prompt_width + T
    lengths = rng.integers(1, T + 1, n).astype(np.int32)
    resp = np.zeros((n, width), bool)
    for i, length in enumerate(lengths):
        resp[i, prompt_width:prompt_width + length] = True
    return Rollout(tokens=rng.integers(3, 9, (n, width)).astype(np.int32),
                   attention_mask=np.ones((n, width), bool) | resp, response_mask=resp,
                   sampler_logp=np.where(resp, -0.5, 0.0).astype(np.float32), lengths=lengths,
                   truncated=lengths == T, prompt_width=prompt_width)


def _scored(n: int, rewards, prompt_width: int = P, seed: int = 0) -> ScoredRollout:
    return with_rewards(_rollout(n, prompt_width, seed), np.asarray(rewards, np.float32),
                        np.asarray(rewards, np.float32) > 0, {"reward/total_mean": float(np.mean(rewards))})


def test_records_take_widen_and_concat_every_per_row_field():
    a, b = _scored(4, [1, 0, 1, 1]), _scored(2, [0, 1], prompt_width=5, seed=1)
    two = take_rows(a, np.array([3, 0]))
    np.testing.assert_array_equal(two.tokens, a.tokens[[3, 0]])
    np.testing.assert_array_equal(two.rewards, [1, 1])
    wide = widen(a, 5)
    assert wide.tokens.shape == (4, 5 + T) and wide.prompt_width == 5
    assert not wide.attention_mask[:, :2].any() and not wide.response_mask[:, :2].any()
    np.testing.assert_array_equal(wide.tokens[:, 2:], a.tokens)
    both = concat([a, b])
    assert isinstance(both, ScoredRollout) and both.prompt_width == 5 and both.tokens.shape == (6, 5 + T)
    np.testing.assert_array_equal(both.rewards, [1, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(both.response_mask.sum(1), np.concatenate([a.lengths, b.lengths]))
    assert both.reward_metrics == a.reward_metrics


def test_shaping_and_the_dr_grpo_constant_live_in_one_place():
    dapo = presets.get("dapo")
    spec = shaping.overlong_shaping(dapo, max_new_tokens=10)
    # 0/1 rewards (overlong_reward_span 1): half of DAPO's +-1 penalty, the paper's weight against correctness
    assert spec == shaping.OverlongShaping(max_len=10, cache_len=2, factor=0.5)
    rewards, metrics = shaping.apply_shaping(np.ones(3, np.float32), np.array([8, 9, 11]), spec)
    np.testing.assert_allclose(rewards, [1.0, 0.75, 0.5])
    assert metrics["reward/overlong_penalty_mean"] == pytest.approx(-0.25)
    assert shaping.overlong_shaping(presets.get("grpo"), 10) is None
    assert shaping.apply_shaping(np.ones(2, np.float32), np.array([50, 60]), None)[1] == {}
    assert shaping.loss_config(presets.get("dr_grpo"), 48).loss_norm_constant == 48.0
    assert shaping.loss_config(presets.get("dr_grpo", loss_norm_constant=7.0), 48).loss_norm_constant == 7.0
    assert shaping.loss_config(presets.get("sspo"), 48) == presets.get("sspo")


class _Chars:
    """A character tokenizer: id k decodes to chr(k + 45) ('0' is id 3); ids 0-2 are special."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i + 45) for i in ids if not (skip_special_tokens and i < 3))


def _batch(golds: list[str], group: int) -> PromptBatch:
    n = len(golds)
    return PromptBatch(input_ids=np.zeros((n, P), np.int32), attention_mask=np.ones((n, P), np.int32),
                       group_ids=np.repeat(np.arange(n // group), group), record_indices=np.arange(n),
                       prompts=[""] * n, golds=golds, metas=[{}] * n, group_size=group, truncated=0, rejected=0)


def test_score_rollout_combines_rewards_shapes_them_and_reads_correctness():
    roll = _rollout(2)
    tokens = roll.tokens.copy()
    tokens[0, P:P + 2], tokens[1, P:P + 2] = [7, 7], [6, 6]  # decode to "44" and "33"
    roll = dataclasses.replace(roll, tokens=tokens, lengths=np.array([2, 4], np.int32),
                               response_mask=np.arange(P + T)[None] - P < np.array([[2], [4]]))
    spec = score.ScoringSpec(RewardConfig(weights={"exact_match": 1.0}, extraction="regex",
                                          answer_patterns=(r"^(\d+)",), workers=0), "exact_match",
                             shaping.OverlongShaping(max_len=4, cache_len=2, factor=1.0))
    out = score.score_rollout(roll, _batch(["44", "44"], 2), _Chars(), spec)
    np.testing.assert_allclose(out.correct, [1.0, 0.0])
    np.testing.assert_allclose(out.rewards, [1.0, -1.0])  # length 4 = L_max: penalty (2 - 4) / 2
    assert out.reward_metrics["reward/exact_match/mean"] == 0.5
    assert out.reward_metrics["reward/overlong_penalty_mean"] == pytest.approx(-0.5)


def test_collect_batch_keeps_varied_groups_and_fills_with_masked_ones():
    draws = iter([_scored(4, [1, 1, 0, 1]), _scored(4, [0, 0, 1, 1], seed=1)])
    out, metrics = collect.collect_batch(lambda r: next(draws), need=2, group_size=2, dynamic=True, max_rounds=2)
    assert metrics == {"dynamic_sampling/rounds": 2.0, "dynamic_sampling/kept_groups": 1.0,
                       "dynamic_sampling/filler_groups": 1.0}
    assert out.tokens.shape[0] == 4
    np.testing.assert_array_equal(out.rewards[:2], [0, 1])  # the one varied group of the first draw
    assert out.response_mask[:2].any() and not out.response_mask[2:].any(), "the filler group trains on nothing"
    one = _scored(4, [1, 1, 0, 0])
    same, none = collect.collect_batch(lambda r: one, need=2, group_size=2, dynamic=False)
    assert same is one and none == {}


def _tiny_policy():
    cfg = Qwen2Config(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=True)
    return nnx.split(Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0)))


def test_sample_rollout_returns_host_rows_of_the_batch():
    graphdef, params = _tiny_policy()
    sampling = SamplingConfig(max_new_tokens=T, temperature=1.0, eos_token_ids=(1,), pad_token_id=0,
                              prompt_buckets=(P,))
    roll, batch = sample.sample_rollout(graphdef, params, _batch(["1"] * 4, 2), sampling, jax.random.key(0))
    assert isinstance(roll, Rollout) and roll.prompt_width == P and roll.tokens.shape == (4, P + T)
    np.testing.assert_array_equal(roll.response_mask.sum(1), roll.lengths)
    assert np.all(roll.sampler_logp[roll.response_mask] <= 0) and len(batch.golds) == 4
    texts = sample.decode_responses(_Chars(), roll)
    assert len(texts) == 4 and all(len(t) <= T for t in texts)


@pytest.mark.parametrize("preset", ["sspo", "grpo", "dr_grpo", "ppo", "sppo"])
def test_prepare_batch_builds_the_update_batch_for_every_estimator(preset):
    alg = presets.get(preset, group_size=2)
    scored = _scored(4, [1, 0, 1, 1])
    n, width = scored.tokens.shape

    def stats(state, tokens, attn, last_prompt, prompt_width=None):
        assert prompt_width == P
        out = {"old_logp": jnp.full((n, width), -0.5), "entropy": jnp.full((n, width), 0.25)}
        if alg.kl_beta > 0:
            out["ref_logp"] = jnp.full((n, width), -0.7)
        if alg.critic == "token":
            out["critic"] = jnp.full((n, width), 0.5)
        elif alg.critic == "prompt":
            out["critic"] = jnp.zeros((n,))
        return out

    fns = prepare.PrepareFns(stats, lambda tokens, mask: jnp.where(mask, 0, -1).astype(jnp.int32))
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jnp.zeros((2,), jnp.uint32), params={}, opt_state=())
    batch, metrics = prepare.prepare_batch(scored, state, fns, HostRows(), alg)
    assert isinstance(batch, RolloutBatch) and batch.advantages.shape == (n, width)
    np.testing.assert_array_equal(np.asarray(batch.response_mask), scored.response_mask)
    assert metrics["sampler_logp_abs_diff"] == 0.0 and metrics["old_entropy_mean"] == 0.25
    if alg.advantage == "sequence_baseline":  # A = R - sigmoid(0)
        np.testing.assert_allclose(np.asarray(batch.advantages)[:, 0], scored.rewards - 0.5)
    elif alg.advantage == "gae":
        assert float(jnp.abs(batch.returns).sum()) > 0 and metrics["value_mean"] == 0.5
    else:
        assert metrics["zero_variance_group_frac"] == 0.5
        np.testing.assert_array_equal(np.asarray(batch.advantages)[2:], 0.0)  # the all-equal second group
    if alg.kl_beta > 0:
        np.testing.assert_allclose(np.asarray(batch.ref_logp), -0.7)


def test_mask_truncated_drops_truncated_rows_from_training():
    scored = _scored(2, [1, 0])
    scored = dataclasses.replace(scored, truncated=np.array([True, False]))
    mask = prepare.response_mask_for_training(scored, presets.get("dapo", mask_truncated=True))
    assert not mask[0].any() and np.array_equal(mask[1], scored.response_mask[1])
    assert np.array_equal(prepare.response_mask_for_training(scored, presets.get("dapo")), scored.response_mask)


class _Tok:
    eos_token_id, pad_token_id = 2, None


def test_stop_tokens_merge_the_config_the_checkpoint_and_the_tokenizer():
    from sspo_jax.errors import ConfigError
    from sspo_jax.train.build import resolve_sampling

    base = SamplingConfig(max_new_tokens=4)
    chat = resolve_sampling(base.replace(eos_token_ids=(7,)), _Tok(), 9, checkpoint_stops=(5, 7), vocab_size=16)
    assert chat.eos_token_ids == (7, 5, 2) and chat.pad_token_id == 7  # <|im_end|>-style ids from the checkpoint
    plain = resolve_sampling(base, _Tok(), [9, 2], vocab_size=16)
    assert plain.eos_token_ids == (2, 9), "without a configured or checkpoint stop, the model config's eos ids"
    with pytest.raises(ConfigError, match=r"stop token id\(s\) \[20\] are outside the model's vocabulary of 16"):
        resolve_sampling(base.replace(eos_token_ids=(20,)), _Tok(), None, vocab_size=16)


def test_dynamic_sampling_filters_on_correctness_unless_told_to_use_the_reward():
    # group 0: all correct, rewards differ only by the overlong penalty; group 1: all wrong, likewise;
    # group 2: one right, one wrong
    roll = with_rewards(_rollout(6), np.array([1.0, 0.75, 0.0, -0.25, 1.0, 0.0], np.float32),
                        np.array([1, 1, 0, 0, 1, 0], np.float32), {})
    out, metrics = collect.collect_batch(lambda r: roll, need=1, group_size=2, dynamic=True, max_rounds=1)
    assert metrics["dynamic_sampling/kept_groups"] == 1 and metrics["dynamic_sampling/filler_groups"] == 0
    np.testing.assert_array_equal(out.correct, [1, 0])  # only group 2: the penalty alone keeps no group
    out, metrics = collect.collect_batch(lambda r: roll, need=3, group_size=2, dynamic=True, max_rounds=1,
                                         metric="reward")
    assert metrics["dynamic_sampling/kept_groups"] == 3  # the total reward varies in every group
    assert presets.get("dapo").dynamic_sampling_metric == "correct"
    with pytest.raises(ValueError, match="dynamic sampling metric"):
        collect.collect_batch(lambda r: roll, need=1, group_size=2, dynamic=True, metric="accuracy")


def test_overlong_penalty_is_scaled_to_the_reward_range():
    from tests.algorithms.numpy_reference import np_dapo_overlong_penalty

    lengths = np.array([3, 8, 9, 10, 11])
    for span, factor, weight in [(1.0, 1.0, 0.5), (2.0, 1.0, 1.0), (1.0, 2.0, 1.0), (4.0, 0.5, 1.0)]:
        alg = presets.get("dapo", overlong_reward_span=span, overlong_penalty_factor=factor)
        spec = shaping.overlong_shaping(alg, max_new_tokens=10)
        assert spec.factor == pytest.approx(weight)
        shaped, _ = shaping.apply_shaping(np.zeros(5, np.float32), lengths, spec)
        np.testing.assert_allclose(shaped, weight * np_dapo_overlong_penalty(lengths, 10, 2), atol=1e-7)
    # with 0/1 rewards the default keeps DAPO's ratio: the worst penalty is half the reward range
    default = shaping.overlong_shaping(presets.get("dapo"), max_new_tokens=10)
    assert shaping.apply_shaping(np.ones(1, np.float32), np.array([11]), default)[0][0] == pytest.approx(0.5)
