"""The one error hierarchy of sspo_jax: every error a user can cause is an `SspoError`.

    SspoError
      ConfigError        a config value, key, flag or combination is invalid (names the key or flag)
        DistributedError (sspo_jax.parallel) the multi-host settings are incomplete or inconsistent
        RewardConfigError (sspo_jax.rewards) a ``rewards.*`` setting is invalid
        SamplingError    (sspo_jax.rollout) a ``sampling.*`` setting is invalid
      DataError          a data file, row or field is unusable (names the file and line)
      CheckpointError    a model or training checkpoint is missing, unreadable or of another model
      ModelError         a model directory's config.json is invalid or of an unsupported family
      TrainingError      training cannot go on (non-finite updates, a checkpoint write that failed)

The CLI prints any of them as one ``error: ...`` line and exits with status 2. Each also derives
from the built-in exception that older code caught (`ValueError` for input errors,
`RuntimeError` for `TrainingError`), so ``except ValueError`` keeps working.

This module imports nothing, so every package (the pure `algorithms` core and the JAX-free
`rewards` workers included) can raise these errors.
"""

from __future__ import annotations


class SspoError(Exception):
    """Base of every user-facing sspo_jax error: its message is one line saying what is wrong and what to do."""


class ConfigError(SspoError, ValueError):
    """An invalid configuration value, key, CLI flag or combination; the message names it."""


class DataError(SspoError, ValueError):
    """A data file, row or field that cannot be used; the message names the file and line."""


class CheckpointError(SspoError, ValueError):
    """A model or training checkpoint that is missing, unreadable, corrupt or of a different model."""


class ModelError(SspoError, ValueError):
    """A model directory whose config.json is invalid, or of a model family that is not supported."""


class TrainingError(SspoError, RuntimeError):
    """Training cannot go on (e.g. too many consecutive non-finite updates, a failed checkpoint write)."""


def one_line(err: BaseException, limit: int = 2000) -> str:
    """`err`'s message on one line (whitespace runs collapsed), cut to `limit` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["CheckpointError", "ConfigError", "DataError", "ModelError", "SspoError", "TrainingError", "one_line"]
