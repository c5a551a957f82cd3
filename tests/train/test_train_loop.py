"""The RL loop end to end on a tiny random model: resume equality, run artefacts, refusals (every preset
trains in tests/cli/test_tiny_configs.py)."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from sspo_jax.rewards import RewardConfig
from sspo_jax.train import Trainer
from sspo_jax.train.logging_io import read_metrics
from tests.train.train_fixtures import digit_share_config, fast_config, make_checkpoint




@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


def _cfg(model_dir, preset, run_dir, *extra, steps=2):
    return digit_share_config(model_dir, preset, run_dir, *extra, steps=steps)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_resume_is_identical_to_an_uninterrupted_run(model_dir, tmp_path):
    straight = Trainer(_cfg(model_dir, "sspo", tmp_path / "a", steps=4), echo=lambda s: None)
    straight.run()
    straight.close()

    first = Trainer(_cfg(model_dir, "sspo", tmp_path / "b", steps=2), echo=lambda s: None)
    first.run()
    first.close()
    messages = []
    resumed = Trainer(_cfg(model_dir, "sspo", tmp_path / "b", steps=4), echo=messages.append)
    assert resumed.start_step == 2 and any("resumed" in m for m in messages)
    resumed.run()
    resumed.close()

    for a, b in zip(_leaves(straight.state.params), _leaves(resumed.state.params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(straight.state.opt_state), _leaves(resumed.state.opt_state)):
        np.testing.assert_array_equal(a, b)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith(("time/", "tokens_per_s"))} for r in rs]  # noqa: E731
    assert strip(read_metrics(tmp_path / "a")) == strip(read_metrics(tmp_path / "b"))


def test_run_directory_artefacts_and_eval(model_dir, tmp_path):
    cfg = fast_config(model_dir, "grpo", tmp_path / "run", "logging.tensorboard=true", "checkpoint.every=2",
                      "checkpoint.keep=1", "optim.warmup_steps=2", steps=3)
    trainer = Trainer(cfg, echo=lambda s: None)
    summary = trainer.run()
    trainer.close()
    run = tmp_path / "run"
    assert (run / "config.yaml").exists() and (run / "summary.json").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]
    assert summary["accuracy_before"] is not None and summary["accuracy_after"] is not None
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    records = read_metrics(run)
    assert records[0]["step"] == 0 and "eval/accuracy" in records[0]
    assert "eval/accuracy" in records[-1]
    # the logged lr is the one each step's update used: warmup from 0 over 2 updates, one update per step
    assert [r["lr"] for r in records if r["step"] > 0] == pytest.approx([0.0, 5e-4, 1e-3])


def test_the_trainer_gives_dr_grpo_the_maximum_generation_length_as_its_constant(model_dir, tmp_path, monkeypatch):
    import jax.numpy as jnp

    from sspo_jax.algorithms import losses
    from sspo_jax.train import trainer as trainer_mod

    seen = {}
    real = trainer_mod.make_update_fn

    def spy(models, alg, *args, **kwargs):
        seen["alg"] = alg
        return real(models, alg, *args, **kwargs)

    monkeypatch.setattr(trainer_mod, "make_update_fn", spy)
    cfg = fast_config(model_dir, "dr_grpo", tmp_path / "run", "eval.enabled=false", "sampling.max_new_tokens=8")
    Trainer(cfg, echo=lambda s: None).close()
    alg = seen["alg"]
    assert alg.loss_agg_mode == "seq-mean-token-sum-norm" and alg.loss_norm_constant == 8.0
    # rows are wider than L_max (prompt + response): each response's token sum is divided by 8, not by T
    mask = jnp.zeros((2, 12), bool).at[0, 4:7].set(True).at[1, 4:12].set(True)
    adv = jnp.array([[1.0], [-0.5]]) * jnp.ones((2, 12))
    logp = jnp.full((2, 12), -1.0)
    out = losses.policy_loss(alg, logp, logp, adv, mask)  # on-policy: the per-token loss is -A
    assert float(out.loss) == pytest.approx((-(1.0 * 3) / 8 + (0.5 * 8) / 8) / 2)


def test_dapo_fills_the_batch_with_masked_groups_when_sampling_is_capped(model_dir, tmp_path):
    cfg = _cfg(model_dir, "dapo", tmp_path / "run", "algorithm.max_sampling_rounds=1", steps=1)
    cfg = cfg.replace(rewards=RewardConfig(weights={"math": 1.0}, workers=0))  # a random model scores 0: no variance
    trainer = Trainer(cfg, echo=lambda s: None)
    before = _leaves(trainer.state.params)
    trainer.run()
    trainer.close()
    (record,) = read_metrics(tmp_path / "run")
    assert record["dynamic_sampling/kept_groups"] == 0 and record["dynamic_sampling/filler_groups"] == 2
    assert record["policy/grad_norm"] == 0.0
    for a, b in zip(before, _leaves(trainer.state.params)):  # nothing to learn from: AdamW with no decay keeps params
        np.testing.assert_allclose(a, b, atol=1e-7)


def test_checkpoint_of_a_different_model_is_refused(model_dir, tmp_path):
    trainer = Trainer(_cfg(model_dir, "sspo", tmp_path / "run", steps=1), echo=lambda s: None)
    trainer.run()
    trainer.close()
    other = make_checkpoint(tmp_path / "other", seed=1)
    import json as _json

    cfg_path = other / "config.json"
    cfg = _json.loads(cfg_path.read_text())
    cfg["num_hidden_layers"] = 1
    cfg_path.write_text(_json.dumps(cfg))
    from sspo_jax.models import Qwen2Config, Qwen2ForCausalLM, save_pretrained
    from flax import nnx

    save_pretrained(Qwen2ForCausalLM(Qwen2Config.from_pretrained_dir(other), rngs=nnx.Rngs(0)), str(other))
    from sspo_jax.algorithms.config import ConfigError

    with pytest.raises(ConfigError, match="different model"):
        Trainer(_cfg(other, "sspo", tmp_path / "run", steps=2), echo=lambda s: None)


def test_unwritable_run_directory_fails_before_training(model_dir, tmp_path):
    from sspo_jax.algorithms.config import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        Trainer(_cfg(model_dir, "sspo", blocker / "run"), echo=lambda s: None)


def test_top_p_sampling_is_refused_for_training(model_dir, tmp_path):
    from sspo_jax.algorithms.config import ConfigError

    cfg = _cfg(model_dir, "sspo", tmp_path / "run")
    with pytest.raises(ConfigError, match="top_p"):
        Trainer(dataclasses.replace(cfg, sampling=cfg.sampling.replace(top_p=0.9)), echo=lambda s: None)


def test_run_stops_after_too_many_consecutive_skipped_updates(model_dir, tmp_path):
    from sspo_jax.train import TrainingError

    trainer = Trainer(_cfg(model_dir, "grpo", tmp_path / "run", "train.max_consecutive_skips=2", steps=5),
                      echo=lambda s: None)
    real_update = trainer.update_fn

    def poisoned(state, batch):  # every update of every step is non-finite
        bad = dataclasses.replace(batch, advantages=batch.advantages * float("nan"))
        return real_update(state, bad)

    trainer.update_fn = poisoned
    with pytest.raises(TrainingError, match="2 consecutive steps had non-finite"):
        trainer.run()
    trainer.close()
    records = read_metrics(tmp_path / "run")
    assert [r["consecutive_skipped_steps"] for r in records] == [1.0, 2.0]
    assert all(r["skipped_updates"] == r["updates"] for r in records)
