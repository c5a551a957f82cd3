"""Random rollout-like batches for the algorithm tests (NumPy, seeded)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from sspo_jax.algorithms import DelimiterTable, presets

VOCAB = 16
DELIM_IDS = (1, 2)  # "," and "." in the toy vocabulary
DECIMAL_SEP_IDS = (2,)  # "." alone
DIGIT_IDS = tuple(range(3, 13))  # "0".."9"


def toy_table() -> DelimiterTable:
    ids = np.arange(VOCAB)
    return DelimiterTable(
        is_delim=jnp.asarray(np.isin(ids, DELIM_IDS)),
        is_decimal_sep=jnp.asarray(np.isin(ids, DECIMAL_SEP_IDS)),
        ends_with_digit=jnp.asarray(np.isin(ids, DIGIT_IDS)),
        starts_with_digit=jnp.asarray(np.isin(ids, DIGIT_IDS)),
    )


@dataclasses.dataclass
class Batch:
    tokens: np.ndarray
    mask: np.ndarray
    logp: np.ndarray
    old_logp: np.ndarray
    ref_logp: np.ndarray
    entropy: np.ndarray
    adv: np.ndarray  # [B]


def random_batch(seed: int, b: int = 6, t: int = 12, *, scale: float = 0.3, prompt_max: int = 3,
                 empty_rows: bool = True) -> Batch:
    """Rows of left prompt (masked) + response (mask 1) + right padding (masked)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, size=(b, t))
    mask = np.zeros((b, t), bool)
    for i in range(b):
        start = rng.integers(0, prompt_max + 1)
        length = rng.integers(1, t - start + 1)
        mask[i, start:start + length] = True
    if empty_rows and b >= 3:
        mask[-1] = False  # an all-padding / empty-response row
    old = -np.abs(rng.normal(1.5, 0.5, size=(b, t)))
    logp = old + scale * rng.normal(size=(b, t))
    ref = old + 0.1 * rng.normal(size=(b, t))
    ent = rng.uniform(0.05, 3.0, size=(b, t))
    adv = rng.normal(size=(b,))
    f32 = lambda x: x.astype(np.float32)  # noqa: E731
    return Batch(tokens.astype(np.int32), mask, f32(logp), f32(old), f32(ref), f32(ent), f32(adv))


def classic_preset(name, **kw):
    """The preset as numpy_reference.py models it: for ``sspo``, without issue 20's token guard,
    quantile normalisation and upper-only widening (the shipped defaults since
    configs/compare/sspo_defaults.yaml; test_issue20_loss.py checks those against
    numpy_reference_sspo.py). Its GRPO and GSPO limits are stated with the guard off."""
    if name == "sspo":
        kw = {"token_guard": False, "entropy_norm": "ratio", "entropy_scale_low": True, **kw}
    return presets.get(name, **kw)
