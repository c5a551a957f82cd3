"""The generated reference docs cannot drift: docs/configuration.md equals a fresh rendering of
the config dataclasses, and the metrics glossary covers every key that real one-step runs log, with
runs chosen so that every preset's metric-relevant features are exercised."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sspo_jax.algorithms import presets
from sspo_jax.rewards import RewardConfig, RewardOutput, register_reward
from sspo_jax.train import Trainer
from sspo_jax.train.logging_io import read_metrics
from sspo_jax.train import metric_names
from tests.train.train_fixtures import fast_config, make_checkpoint

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))  # the doc generator is tooling, outside the package
from reference_docs import (METRICS, DocsError, field_descriptions, glossary_entry,  # noqa: E402
                            render_configuration_reference, render_metrics_glossary)


def test_committed_configuration_reference_matches_the_dataclasses():
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == render_configuration_reference(), (
        "docs/configuration.md is stale: run .venv/bin/python scripts/gen_docs.py")


def test_committed_metrics_glossary_matches_the_module():
    committed = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert committed == render_metrics_glossary(), "docs/metrics.md is stale: run .venv/bin/python scripts/gen_docs.py"


def test_readme_links_both_documents():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/configuration.md" in readme and "docs/metrics.md" in readme


def test_every_config_key_is_in_the_reference():
    from sspo_jax.train.config import TrainConfig, config_to_mapping

    text = render_configuration_reference()

    def keys(mapping, prefix=""):
        for k, v in mapping.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and k not in ("weights", "reasoning_gym_options"):
                yield from keys(v, key + ".")
            else:
                yield key

    for key in keys(config_to_mapping(TrainConfig())):
        assert f"| `{key}` |" in text or f"## `{key}`" in text, key  # a key, or an optional section


def test_docstring_parser_accepts_shared_and_continued_entries_and_rejects_gaps():
    @dataclasses.dataclass
    class Good:
        """Summary.

        Attributes:
          a, b: shared
            and continued.
          c: own.
        """

        a: int = 0
        b: int = 0
        c: int = 0

    assert field_descriptions(Good) == {"a": "shared and continued.", "b": "shared and continued.", "c": "own."}

    @dataclasses.dataclass
    class Missing:
        """Summary.

        Attributes:
          a: documented.
        """

        a: int = 0
        b: int = 0

    with pytest.raises(DocsError, match=r"\['b'\]"):
        field_descriptions(Missing)

    @dataclasses.dataclass
    class Stale:
        """Summary.

        Attributes:
          a: documented.
          gone: no longer a field.
        """

        a: int = 0

    with pytest.raises(DocsError, match="gone"):
        field_descriptions(Stale)


def test_glossary_patterns():
    assert glossary_entry("reward/math/mean") == "reward/<name>/mean"
    assert glossary_entry("eval/pass@4") == "eval/pass@<k>"
    assert glossary_entry("reward/mean") == "reward/mean"
    assert glossary_entry("reward/a/b/mean") is None
    assert glossary_entry("no/such/key") is None


# ---- every logged key is in the glossary ---------------------------------------------------------

def _digit_share(responses, golds, **_):
    """A dense test reward a random model can earn: the share of digit characters."""
    return RewardOutput(np.array([sum(c.isdigit() for c in r) / max(len(r), 1) for r in responses], np.float32))


register_reward("docs_digit_share", _digit_share, overwrite=True)


# Which metrics a run logs depends only on these properties of its algorithm (see
# the train stages and losses.policy_loss); four runs cover every preset's combination.
def _features(alg) -> set[str]:
    group = {"group_zscore": "group", "group_mean": "group", "rloo": "group"}.get(alg.advantage, alg.advantage)
    out = {f"critic:{alg.critic}", f"advantage:{group}"}
    out |= {name for name, on in (("kl", alg.kl_beta > 0), ("entropy", alg.uses_entropy),
                                  ("dynamic_sampling", alg.dynamic_sampling),
                                  ("overlong", alg.overlong_buffer_frac is not None),
                                  ("minibatches", alg.num_minibatches > 1),
                                  ("covariance", alg.policy_loss_kind in ("clip_cov", "kl_cov")),
                                  ("entropy_mask", alg.entropy_mask_percentile is not None)) if on}
    return out


# preset, extra overrides: sspo with every optional feature of the critic-free presets switched on
# (GRPO's KL, DAPO's dynamic sampling and overlong penalty, GSPO's minibatches) and an evaluation
# with pass@2; then the two critic presets.
RUNS = {
    "union": ("sspo", ["algorithm.kl_beta=0.04", "algorithm.dynamic_sampling=true",
                       "algorithm.dynamic_sampling_metric=reward",  # the dense test reward varies; correctness not
                       "algorithm.overlong_buffer_frac=0.2", "algorithm.num_minibatches=2",
                       "algorithm.entropy_mask_percentile=80",
                       "eval.samples=2", "eval.size=2", "eval.batch_size=2"]),
    "clip_cov": ("clip_cov", ["eval.enabled=false"]),
    "ppo": ("ppo", ["eval.enabled=false", "algorithm.kl_in_reward_beta=0.01"]),  # + the KL in the reward
    "sppo": ("sppo", ["eval.enabled=false"]),
}


def _run_config(model_dir, name, run_dir):
    preset, extra = RUNS[name]
    cfg = fast_config(model_dir, preset, run_dir, "checkpoint.enabled=false", *extra, steps=1)
    return cfg.replace(rewards=RewardConfig(weights={"docs_digit_share": 1.0}, workers=0))


def test_the_runs_cover_the_features_of_every_preset(tmp_path):
    run_features = [_features(_run_config(tmp_path, name, tmp_path / name).algorithm) for name in RUNS]
    for preset in presets.names():
        feats = _features(presets.get(preset))
        assert any(feats <= f for f in run_features), (
            f"preset {preset!r} has the metric-relevant features {sorted(feats)}, which no run in RUNS covers: "
            "add a run so that the glossary test sees its metrics")


@pytest.fixture(scope="module")
def logged_keys(tmp_path_factory) -> dict[str, set[str]]:
    """Keys of metrics.jsonl after one step of each run in RUNS."""
    model_dir = make_checkpoint(tmp_path_factory.mktemp("tiny") / "model")
    out: dict[str, set[str]] = {}
    for name in RUNS:
        run_dir = tmp_path_factory.mktemp(f"run_{name}")
        trainer = Trainer(_run_config(model_dir, name, run_dir), echo=lambda s: None)
        try:
            trainer.run()
        finally:
            trainer.close()
        out[name] = {k for record in read_metrics(run_dir) for k in record}
    return out


def test_every_logged_metric_is_in_the_glossary(logged_keys):
    for run, keys in logged_keys.items():
        missing = sorted(k for k in keys if glossary_entry(k) is None)
        assert not missing, (f"run {run!r} logs {missing}, which docs/metrics.md does not explain: add them "
                             "to METRICS in scripts/reference_docs.py and run scripts/gen_docs.py")


def test_every_glossary_entry_is_logged_by_some_run(logged_keys):
    used = {glossary_entry(k) for keys in logged_keys.values() for k in keys}
    stale = sorted(set(METRICS) - used)
    assert not stale, textwrap.shorten(f"glossary entries no run logs (stale?): {stale}", 400)


def test_every_metric_name_the_trainer_writes_has_a_glossary_entry():
    missing = [name for name in metric_names.STEP_METRICS if glossary_entry(name) is None]
    assert not missing, f"sspo_jax/train/metric_names.py names {missing}, which docs/metrics.md does not explain"
