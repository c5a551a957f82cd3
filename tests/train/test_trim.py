"""`train.trim_multiple`: the stats pass and the update run without the all-padding columns, and
train exactly what the full width trains (up to float summation order)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sspo_jax.errors import ConfigError
from sspo_jax.train import Trainer
from sspo_jax.train.records import Rollout, padding_bounds, trim, trimmed_width
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


def _shorten(roll, lengths):
    """`roll` with each response cut to `lengths` (padding after it), as if it had stopped there."""
    p = roll.prompt_width
    lengths = np.minimum(roll.lengths, lengths)
    keep = np.arange(roll.tokens.shape[1])[None] < (p + lengths)[:, None]
    resp = roll.response_mask & keep
    return dataclasses.replace(roll, tokens=np.where(keep, roll.tokens, 0), attention_mask=roll.attention_mask & keep,
                               response_mask=resp, sampler_logp=np.where(resp, roll.sampler_logp, 0.0),
                               lengths=lengths.astype(np.int32), truncated=np.zeros_like(roll.truncated))


@pytest.mark.parametrize("preset,extra", [("sspo", ("algorithm.num_minibatches=2",)), ("sppo", ()), ("ppo", ())])
def test_a_trimmed_batch_trains_what_the_full_width_trains(model_dir, tmp_path, preset, extra):
    cfg = digit_share_config(model_dir, preset, tmp_path / "run", "train.trim_multiple=0", "checkpoint.enabled=false",
                             "sampling.max_new_tokens=16", *extra, steps=1)
    trainer = Trainer(cfg, echo=lambda s: None)
    try:
        roll, _ = trainer.collect(jax.random.key(3))
        roll = _shorten(roll, np.resize([3, 5, 2, 4], roll.lengths.shape))
        lead, lengths = padding_bounds(roll)
        cut = trim(roll, 4, int(lead.min()), int(lengths.max()))
        assert cut.prompt_width < roll.prompt_width and cut.tokens.shape[1] - cut.prompt_width == 8  # of 16
        results = []
        for record in (roll, cut):
            batch, prep = trainer.prepare(record)
            state = jax.tree.map(jnp.copy, trainer.state)  # the update donates its state
            state, metrics = trainer.update_fn(state, batch)
            results.append((state, {**prep, **{k: float(v) for k, v in metrics.items()}}))
    finally:
        trainer.close()
    (full, m_full), (short, m_cut) = results
    # lr 1e-3: a lost or extra column would move many weights by ~1e-3; float summation order
    # moves an Adam step of a near-zero gradient by a few 1e-6
    for a, b in zip(jax.tree.leaves((full.params, full.critic_params)), jax.tree.leaves((short.params, short.critic_params))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5)
    assert m_full.keys() == m_cut.keys()
    for k in m_full:
        np.testing.assert_allclose(m_full[k], m_cut[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_the_trainer_trims_by_the_batch_bounds(model_dir, tmp_path):
    cfg = digit_share_config(model_dir, "grpo", tmp_path / "run", "checkpoint.enabled=false", steps=1)
    trainer = Trainer(cfg, echo=lambda s: None)
    try:
        roll, _ = trainer.collect(jax.random.key(0))
        lead, lengths = padding_bounds(roll)
        out = trainer.trim(roll)
    finally:
        trainer.close()
    assert cfg.train.trim_multiple == 8
    assert out.prompt_width == trimmed_width(roll.prompt_width - int(lead.min()), 8, roll.prompt_width)
    assert out.prompt_width < roll.prompt_width  # short prompts in a 32-column bucket
    assert out.tokens.shape[1] - out.prompt_width == trimmed_width(int(lengths.max()), 8, 8)


def test_trimmed_widths_grow_in_steps_of_an_eighth():
    assert [trimmed_width(w, 8, 10 ** 6) for w in (1, 8, 9, 23, 64, 65, 129, 300, 1000, 1025)] == \
        [8, 8, 16, 24, 64, 72, 144, 320, 1024, 1152]
    assert trimmed_width(300, 8, 260) == 260  # never beyond the cap
    widths = {trimmed_width(w, 8, 4096) for w in range(1, 4097)}
    assert len(widths) <= 8 * 9 + 8                               # ~8 per doubling from 8 to 4096
    assert all(trimmed_width(w, 8, 4096) - w < max(8, w / 8) for w in range(1, 4097))  # under 1/8 or a step
