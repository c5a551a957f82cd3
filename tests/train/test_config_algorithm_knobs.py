"""The algorithm knobs of the audit (issue "Algorithms: the audit's fixes") as a job sees them: each
loads from YAML-style overrides, an impossible value is a one-line `ConfigError` naming the key, and
the shipped configs carry the papers' schedules (DAPO's 16 and SPPO's 2 minibatches, SPPO's
temperature 0.6) while staying valid (rows a multiple of minibatches x micro-batch rows)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sspo_jax.errors import ConfigError
from sspo_jax.train.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PATHS = ["model.path=/models/q", "data.path=/data/train.jsonl", "eval.path=/data/test.jsonl"]


def test_the_new_algorithm_keys_load_and_reach_the_algorithm():
    cfg = load_config(None, ["algorithm.preset=ppo", "algorithm.kl_in_reward_beta=0.02",
                             "algorithm.kl_in_reward_estimator=k3", "algorithm.critic_warmup_steps=3",
                             "train.steps=10"])
    alg = cfg.algorithm
    assert (alg.kl_in_reward_beta, alg.kl_in_reward_estimator, alg.critic_warmup_steps) == (0.02, "k3", 3)
    assert alg.needs_ref_logp
    dapo = load_config(None, ["algorithm.preset=dapo", "algorithm.dynamic_sampling_metric=reward",
                              "algorithm.overlong_reward_span=2"]).algorithm
    assert (dapo.dynamic_sampling_metric, dapo.overlong_reward_span) == ("reward", 2.0)


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.preset=ppo", "algorithm.critic_warmup_steps=5", "train.steps=5"],
     r"algorithm.critic_warmup_steps=5 must be below train.steps=5"),
    (["algorithm.preset=sspo", "algorithm.critic_warmup_steps=1"], r"critic_warmup_steps=1 warms up a critic"),
    (["algorithm.preset=sspo", "algorithm.kl_in_reward_beta=0.1"], r"kl_in_reward_beta=0.1 .*advantage='gae'"),
    (["algorithm.preset=ppo", "algorithm.kl_in_reward_estimator=k9"], r"kl_in_reward_estimator='k9'"),
    (["algorithm.preset=dapo", "algorithm.dynamic_sampling_metric=acc"], r"dynamic_sampling_metric='acc'"),
    (["algorithm.preset=dapo", "algorithm.overlong_reward_span=-1"], r"overlong_reward_span=-1.0 must be > 0"),
    (["algorithm.preset=dapo", "data.batch_size=1"], r"algorithm.num_minibatches=16 must divide"),
])
def test_bad_values_are_one_line_errors_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value)


def test_tiny_configs_take_the_papers_minibatches_and_stay_valid():
    dapo = load_config(CONFIGS / "tiny_dapo.yaml")
    assert dapo.algorithm.num_minibatches == 16 and dapo.rows == 256 and dapo.micro_batch_size == 16
    sppo = load_config(CONFIGS / "tiny_sppo.yaml")
    assert sppo.algorithm.num_minibatches == 2 and sppo.rows == 256
    assert sppo.sampling.temperature == 1.0  # the documented CPU-scale compromise (the paper: 0.6)


def test_paper_configs_of_dapo_and_sppo_follow_the_papers():
    dapo = load_config(CONFIGS / "qwen2.5-math-1.5b_dapo.yaml", PATHS)
    assert dapo.algorithm.num_minibatches == 16 and dapo.rows // 16 % dapo.micro_batch_size == 0
    sppo = load_config(CONFIGS / "qwen2.5-math-1.5b_sppo.yaml", PATHS)
    assert sppo.algorithm.num_minibatches == 2 and sppo.sampling.temperature == 0.6
