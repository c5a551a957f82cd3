"""Presets: every name resolves, overrides are validated, impossible settings are clear errors."""

from __future__ import annotations

import dataclasses

import pytest

from sspo_jax.algorithms import AlgorithmConfig, ConfigError, SegmentationConfig, presets


def test_every_preset_resolves_and_is_hashable():
    assert presets.names() == ["cispo", "clip_cov", "dapo", "dr_grpo", "gmpo", "grpo", "gspo", "gspo_token",
                               "kl_cov", "ppo", "sppo", "sspo", "top_entropy"]
    for name in presets.names():
        cfg = presets.get(name)
        assert cfg.name == name
        hash(cfg)  # static argument of jit


def test_preset_settings_follow_the_papers():
    sspo = presets.get("sspo")
    assert (sspo.eps_low, sspo.eps_high, sspo.entropy_alpha, sspo.segmentation.granularity) == (0.2, 0.28, 1.0, "subsentence")
    assert sspo.uses_entropy and not presets.get("grpo").uses_entropy
    gspo = presets.get("gspo")
    assert (gspo.eps_low, gspo.eps_high, gspo.segmentation.granularity, gspo.ratio_form) == (3e-4, 4e-4, "sequence", "broadcast")
    assert presets.get("gspo_token").ratio_form == "sg" and gspo.num_minibatches > 1
    grpo = presets.get("grpo")
    assert (grpo.kl_beta, grpo.kl_estimator, grpo.loss_agg_mode) == (0.04, "k3", "seq-mean-token-mean")
    dapo = presets.get("dapo")
    assert dapo.dynamic_sampling and dapo.overlong_buffer_frac == 0.2 and dapo.loss_agg_mode == "token-mean"
    assert presets.get("dr_grpo").advantage == "group_mean"
    assert presets.get("dr_grpo").loss_agg_mode == "seq-mean-token-sum-norm"
    ppo, sppo = presets.get("ppo"), presets.get("sppo")
    assert (ppo.critic, ppo.advantage, ppo.dual_clip) == ("token", "gae", 3.0)
    assert (sppo.critic, sppo.advantage, sppo.group_size, sppo.dual_clip) == ("prompt", "sequence_baseline", 1, 3.0)


def test_dapo_and_sppo_follow_their_papers_schedules():
    # DAPO (arXiv 2503.14476): 512 prompts x 16 responses, minibatches of 512 responses: 16 updates per rollout
    dapo = presets.get("dapo")
    assert dapo.num_minibatches == 16 and dapo.ppo_epochs == 1
    assert dapo.dynamic_sampling_metric == "correct" and dapo.overlong_reward_span == 1.0  # 0/1 rewards
    # SPPO (arXiv 2604.08865): the official Qwen2.5-Math-1.5B scripts use 2 minibatches (7B: 16)
    sppo = presets.get("sppo")
    assert (sppo.num_minibatches, sppo.ppo_epochs, sppo.group_size) == (2, 1, 1)
    assert presets.get("ppo").kl_in_reward_beta == 0 and presets.get("ppo").critic_warmup_steps == 0
    assert not presets.get("ppo").needs_ref_logp and presets.get("grpo").needs_ref_logp
    assert presets.get("ppo", kl_in_reward_beta=0.01).needs_ref_logp


def test_every_preset_names_its_paper():
    assert set(presets.PAPERS) == set(presets.names())
    for name, (paper, what) in presets.PAPERS.items():
        assert "arXiv" in paper and what, name


def test_overrides_and_nested_segmentation():
    cfg = presets.get("sspo", eps_high=0.3, segmentation={"granularity": "token", "min_segment_len": 2})
    assert cfg.eps_high == 0.3 and cfg.segmentation == SegmentationConfig(granularity="token", min_segment_len=2)
    assert cfg.replace(segmentation={"max_segment_len": 8}).segmentation.max_segment_len == 8


@pytest.mark.parametrize("kwargs,match", [
    ({"eps_low": 1.0}, "eps_low"),
    ({"eps_low": -0.1}, "eps_low"),
    ({"eps_high": -1.0}, "eps_high"),
    ({"eps_low": 0.6, "entropy_g_max": 2.0}, "eps_low \\* entropy_g_max"),
    ({"entropy_g_min": 0.0}, "entropy_g_min"),
    ({"loss_agg_mode": "mean"}, "loss_agg_mode"),
    ({"kl_estimator": "k9"}, "kl_estimator"),
    ({"group_size": 0}, "group_size"),
    ({"dual_clip": 0.5}, "dual_clip"),
    ({"ratio_form": "product"}, "ratio_form"),
    ({"advantage": "gae"}, "critic='token'"),
    ({"ppo_epochs": 0}, "ppo_epochs"),
    ({"segmentation": {"min_segment_len": 0}}, "min_segment_len"),
    ({"overlong_buffer_frac": 1.5}, "overlong_buffer_frac"),
    ({"dynamic_sampling_metric": "accuracy"}, "dynamic_sampling_metric='accuracy' is not one of"),
    ({"overlong_reward_span": 0.0}, "overlong_reward_span=0.0 must be > 0"),
    ({"kl_in_reward_beta": -0.1}, "kl_in_reward_beta=-0.1 must be >= 0"),
    ({"kl_in_reward_beta": 0.1}, "kl_in_reward_beta=0.1 .*advantage='gae'"),
    ({"kl_in_reward_estimator": "k4"}, "kl_in_reward_estimator='k4' is not one of"),
    ({"critic_warmup_steps": -1}, "critic_warmup_steps=-1 must be an integer >= 0"),
    ({"critic_warmup_steps": 2}, "critic_warmup_steps=2 warms up a critic, but critic='none'"),
])
def test_invalid_values_name_the_field(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        presets.get("sspo", **kwargs)


def test_unknown_names():
    with pytest.raises(ConfigError, match="unknown algorithm preset 'ppo2'.*known presets"):
        presets.get("ppo2")
    with pytest.raises(ConfigError, match="unknown algorithm field.*'epsilon'"):
        presets.get("grpo", epsilon=0.1)
    with pytest.raises(ConfigError, match="unknown segmentation field.*'delims'"):
        presets.get("sspo", segmentation={"delims": ","})


def test_register_a_user_preset():
    cfg = dataclasses.replace(presets.get("sspo"), name="sspo_sentence",
                              segmentation=SegmentationConfig(sentence_only=True))
    try:
        presets.register(cfg)
        assert presets.get("sspo_sentence").segmentation.sentence_only
        with pytest.raises(ConfigError, match="already exists"):
            presets.register(cfg)
    finally:
        presets.PRESETS.pop("sspo_sentence", None)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        AlgorithmConfig().eps_low = 0.5  # type: ignore[misc]
