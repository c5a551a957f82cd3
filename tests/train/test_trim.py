"""`train.trim_multiple`: the stats pass and the update run without the all-padding columns, and
train exactly what the full width trains (up to float summation order)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from sspo_jax.errors import ConfigError
from sspo_jax.train import Trainer
from sspo_jax.train.records import Rollout, padding_bounds, trim
from tests.train.train_fixtures import digit_share_config, make_checkpoint


def _record(prompt_lens, lengths, p=12, r=10):
    n = len(prompt_lens)
    attn = np.zeros((n, p + r), bool)
    resp = np.zeros((n, p + r), bool)
    for i, (pl, ln) in enumerate(zip(prompt_lens, lengths)):
        attn[i, p - pl:p + ln] = True
        resp[i, p:p + ln] = True
    tokens = np.where(attn, np.arange(1, p + r + 1)[None], 0).astype(np.int32)
    logp = np.where(resp, -0.5, 0.0).astype(np.float32)
    return Rollout(tokens=tokens, attention_mask=attn, response_mask=resp, sampler_logp=logp,
                   lengths=np.asarray(lengths, np.int32), truncated=np.asarray(lengths) == r, prompt_width=p)


def test_padding_bounds_are_the_leading_pad_columns_and_the_lengths():
    lead, lengths = padding_bounds(_record([5, 9, 3], [4, 7, 1]))
    np.testing.assert_array_equal(lead, [7, 3, 9])
    np.testing.assert_array_equal(lengths, [4, 7, 1])


def test_trim_drops_whole_steps_of_all_padding_columns_on_both_sides():
    rec = _record([5, 9, 3], [4, 7, 1])          # P=12, R=10; fewest leading pads 3; longest 7
    out = trim(rec, 2, *[f(b) for f, b in zip((np.min, np.max), padding_bounds(rec))])
    assert out.prompt_width == 10                 # 3 leading pad columns -> 2 dropped (a step of 2)
    assert out.tokens.shape == (3, 10 + 8)        # longest 7 -> 8 response columns kept
    for f in ("tokens", "attention_mask", "response_mask", "sampler_logp"):
        np.testing.assert_array_equal(getattr(out, f), getattr(rec, f)[:, 2:20])
    np.testing.assert_array_equal(out.lengths, rec.lengths)
    # nothing real is lost: every True of the masks and every token survives
    assert out.attention_mask.sum() == rec.attention_mask.sum() and out.tokens.sum() == rec.tokens.sum()


def test_trim_is_the_identity_when_off_or_nothing_to_drop():
    rec = _record([12, 4], [10, 2])
    assert trim(rec, 0, 0, 10) is rec
    assert trim(rec, 4, 0, 10) is rec             # a full-width prompt and a full-length response


def test_trim_keeps_a_prompt_column_when_every_row_is_empty():
    rec = _record([0, 0], [0, 0], p=8, r=4)
    out = trim(rec, 4, *[f(b) for f, b in zip((np.min, np.max), padding_bounds(rec))])
    assert out.prompt_width == 4 and out.tokens.shape[1] == 4 + 4


def test_a_negative_trim_multiple_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="train.trim_multiple=-1"):
        digit_share_config(tmp_path, "grpo", tmp_path / "r", "train.trim_multiple=-1", steps=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


def _train(model_dir, run_dir, preset, multiple, *extra):
    cfg = digit_share_config(model_dir, preset, run_dir, f"train.trim_multiple={multiple}",
                             "checkpoint.enabled=false", *extra, steps=1)
    trainer = Trainer(cfg, echo=lambda s: None)
    widths, inner = [], trainer.update_fn
    trainer.update_fn = lambda state, batch: (widths.append((batch.prompt_width, batch.tokens.shape[1])),
                                              inner(state, batch))[1]
    metrics = [trainer.step(1)]
    trainer.close()
    return trainer.state, metrics, widths


@pytest.mark.parametrize("preset,extra", [("sspo", ("algorithm.num_minibatches=2",)), ("sppo", ())])
def test_a_trimmed_batch_trains_what_the_full_width_trains(model_dir, tmp_path, preset, extra):
    full, m_full, w_full = _train(model_dir, tmp_path / "full", preset, 0, *extra)
    cut, m_cut, w_cut = _train(model_dir, tmp_path / "cut", preset, 4, *extra)
    assert all(wc[1] < wf[1] and wc[0] < wf[0] for wc, wf in zip(w_cut, w_full)), (w_cut, w_full)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(cut.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    for a, b in zip(jax.tree.leaves(full.opt_state), jax.tree.leaves(cut.opt_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-9)
    for ra, rb in zip(m_full, m_cut):
        for k in ra:
            if not k.startswith(("time/", "tokens_per_s")):
                np.testing.assert_allclose(ra[k], rb[k], rtol=1e-4, atol=1e-6, err_msg=k)
