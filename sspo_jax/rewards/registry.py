"""The reward registry: names (and ``package.module:function`` specs) -> reward functions.

A leaf module: it imports no reward implementation, so configs name rewards freely and a name
is resolved only when it is used (`get_reward`). The built-in rewards (``math``, ``exact_match``,
``format``, ``overlong``, ``reasoning_gym``) register themselves when `sspo_jax.rewards.builtins`
is imported, which the first lookup does.

Every reward has one signature, ``fn(inp: RewardInput, cfg: RewardConfig) -> RewardOutput``::

    @register_reward("length_bonus")
    def length_bonus(inp, cfg):
        return RewardOutput(np.array([len(r) / 100 for r in inp.responses], np.float32))

A reward another process must find (``sspo-jax eval``, ``compare``, a multi-host worker) can be
named in ``rewards.weights`` as ``my_pkg.my_rewards:length_bonus``: the module is imported and the
attribute used; it is a `RewardFunction` (from `@register_reward` or `@reward_function`) or a plain
function of ``(RewardInput, RewardConfig)``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from sspo_jax.rewards.config import RewardConfigError
from sspo_jax.rewards.inputs import RewardInput
from sspo_jax.rewards.output import RewardOutput

CoreFn = Callable[[RewardInput, Any], RewardOutput]


class UnknownRewardError(RewardConfigError, KeyError):
    """A reward name that is neither registered nor an importable ``module:function`` spec."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True)
class RewardFunction:
    """A reward: ``fn(inp, cfg) -> RewardOutput`` over N responses (see the module docstring).

    Calling it also accepts the loose form ``reward(responses, golds, *, metas=None,
    response_lengths=None, truncated=None, cfg=None, **overrides)``, where `overrides` replace
    single `RewardConfig` fields (``math_reward(rs, gs, workers=0)``).

    Attributes:
      fn: the implementation, a function of (`RewardInput`, `RewardConfig`).
      name: the registered name (or the function's own name).
    """

    fn: CoreFn
    name: str
    origin: Any = dataclasses.field(default=None, compare=False)

    def score(self, inp: RewardInput, cfg) -> RewardOutput:
        """`RewardOutput` (scores float32 [N]) of the N responses of `inp` under `cfg`."""
        return self.fn(inp, cfg)

    def __call__(self, responses, golds=None, *, metas=None, response_lengths=None, truncated=None, cfg=None,
                 **overrides) -> RewardOutput:
        from sspo_jax.rewards.config import make_config

        inp = responses if isinstance(responses, RewardInput) else RewardInput(
            responses, golds if golds is not None else [""] * len(responses), metas, response_lengths, truncated)
        return self.fn(inp, make_config(cfg, **overrides))


_REGISTRY: dict[str, RewardFunction] = {}


def reward_function(fn: CoreFn) -> RewardFunction:
    """Decorator: `fn` of (`RewardInput`, `RewardConfig`) as a `RewardFunction`, without registering it
    (for rewards named by ``module:function`` spec)."""
    return fn if isinstance(fn, RewardFunction) else RewardFunction(fn, getattr(fn, "__name__", "reward"))


def _from_keywords(fn: Callable[..., RewardOutput], name: str) -> RewardFunction:
    def core(inp: RewardInput, cfg) -> RewardOutput:
        return fn(list(inp.responses), list(inp.golds), metas=inp.metas, response_lengths=inp.response_lengths,
                  truncated=inp.truncated, cfg=cfg)
    return RewardFunction(core, name, origin=fn)


def register_reward(name: str, fn: Callable[..., RewardOutput] | None = None, *, overwrite: bool = False):
    """Make a reward available under `name` in ``rewards.weights``.

    Two forms:
      ``@register_reward("name")`` decorates a function of (`RewardInput`, `RewardConfig`) and
      returns it as a `RewardFunction`.
      ``register_reward("name", fn)`` registers a function of the keyword signature
      ``fn(responses, golds, *, metas, response_lengths, truncated, cfg)`` (or a `RewardFunction`).

    Raises:
      ValueError: `name` is empty, not a string, contains ``:`` (reserved for specs), or already
        names another function and `overwrite` is false.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"a reward name must be a non-empty string without ':', got {name!r}")

    def add(reward: RewardFunction) -> RewardFunction:
        old = _REGISTRY.get(name)
        if old is not None and not overwrite and (old.origin or old.fn) is not (reward.origin or reward.fn):
            raise ValueError(f"a reward named {name!r} is already registered; pass overwrite=True to replace it")
        _REGISTRY[name] = reward
        return reward

    if fn is None:
        return lambda core: add(RewardFunction(core, name) if not isinstance(core, RewardFunction) else core)
    add(fn if isinstance(fn, RewardFunction) else _from_keywords(fn, name))
    return None


def _load_builtins() -> None:
    import sspo_jax.rewards.builtins  # noqa: F401 - registers the built-in rewards


def registered_rewards() -> tuple[str, ...]:
    """Names of all registered reward functions (the built-ins included)."""
    _load_builtins()
    return tuple(_REGISTRY)


def _from_spec(spec: str) -> RewardFunction:
    module_name, _, attr = spec.partition(":")
    hint = "a reward spec is 'package.module:function' with the module on the Python path"
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UnknownRewardError(f"reward {spec!r}: cannot import module {module_name!r} ({err}); {hint}") from None
    target = getattr(module, attr, None)
    if target is None or not callable(target):
        raise UnknownRewardError(f"reward {spec!r}: module {module_name!r} has no function {attr!r}; {hint}")
    return reward_function(target)


def get_reward(name: str) -> RewardFunction:
    """The reward registered as `name`, or the function a ``package.module:function`` spec names.

    Raises:
      UnknownRewardError (a `ConfigError` and a `KeyError`): `name` is not registered (the message
        lists the known names) or its spec cannot be imported.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if isinstance(name, str) and ":" in name:
        return _from_spec(name)
    raise UnknownRewardError(f"unknown reward {name!r}; known rewards: {sorted(_REGISTRY)} (register custom ones "
                             "with register_reward, or name them as 'package.module:function')")
