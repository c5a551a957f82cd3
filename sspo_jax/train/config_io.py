"""Typed construction of nested frozen dataclasses from YAML mappings, with dotted overrides.

`from_mapping(cls, data)` checks every key and type against the dataclass fields and raises
`ConfigError` naming the dotted key (``optim.lr``), what was expected and what was given; the
dataclasses' own validation then checks values. `apply_overrides` applies ``key.sub=value``
strings (values parsed as YAML scalars) before construction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from sspo_jax.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a mapping with the same key twice (YAML keeps the last
    silently, so an earlier block would be dropped)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"{loader.name}: line {key_node.start_mark.line + 1}: key {key!r} appears twice in "
                              f"one mapping (first at line {seen[key] + 1}); merge the two blocks")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _config_dirs() -> tuple[Path, ...]:
    """Where a relative ``include:`` is looked for after the including file's own directory: the
    package's bundled ``configs/`` folder (a checkout's), so ``include: tiny_base.yaml`` works from
    a user's file anywhere."""
    root = Path(__file__).resolve().parents[2] / "configs"
    return (root,) if root.is_dir() else ()


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Reads a YAML mapping; syntax errors and repeated keys name the file and line.

    A top-level ``include: base.yaml`` (or a list of files) is read first and deep-merged under
    this file's own keys; a relative include is looked for next to this file, then in the
    project's ``configs/`` folder. An empty file is an error (an empty mapping ``{}`` is not).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        loader = _UniqueKeyLoader(text)
        loader.name = str(path)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty; write its sections (or {{}} for every default)")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    data = dict(data)
    includes = data.pop("include", None)
    if includes is None:
        return data
    merged: dict[str, Any] = {}
    for inc in [includes] if isinstance(includes, str) else list(includes):
        inc_path = (path.parent / str(inc)).resolve()
        if not inc_path.is_file() and not Path(str(inc)).is_absolute():
            inc_path = next((d / str(inc) for d in _config_dirs() if (d / str(inc)).is_file()), inc_path)
        if inc_path in _seen or inc_path == path.resolve():
            raise ConfigError(f"{path}: include {inc!r} forms a cycle")
        merged = deep_merge(merged, load_yaml(inc_path, (*_seen, path.resolve())))
    return deep_merge(merged, data)


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`, merging nested mappings key by key."""
    out = _deep_copy(dict(base))
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = _deep_copy(value)
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies ``a.b.c=value`` overrides to a nested dict (a copy).

    Values are parsed as YAML scalars or lists (``3``, ``1e-5``, ``true``, ``[32, 64]``); text in
    braces stays a string (``{prompt}``); set nested mappings key by key.
    """
    data = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key part")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, dict):  # "{prompt}" is a template string, not a YAML mapping
            value = raw
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _deep_copy(x):
    if isinstance(x, Mapping):
        return {k: _deep_copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deep_copy(v) for v in x]
    return x


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


REQUIRED = "???"


def convert(tp, value, key: str):
    """`value` checked and converted to the annotated type `tp`; `key` names it in errors.

    The marker ``???`` (a required value a config file leaves to the user) is an error naming the key.
    """
    if isinstance(value, str) and value.strip() == REQUIRED:
        raise ConfigError(f"{key} is required (the config file leaves it as {REQUIRED}): set it, e.g. --set {key}=...")
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_mapping(tp, value, key)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{key}: {value!r} matches none of {[_type_name(a) for a in args]}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {list(choices)}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, Mapping) and args and typing.get_origin(args[0]) is tuple:
            value = list(value.items())  # {name: weight} -> ((name, weight), ...)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            if args and args[-1] is Ellipsis and not isinstance(value, (str, bytes, Mapping)) and value is not None:
                value = [value]  # a scalar where a list is expected
            else:
                raise ConfigError(f"{key} must be a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{key} must have {len(args)} items, got {len(value)}")
        return tuple(convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value))) if args else tuple(value)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key} must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):  # .inf / .nan are YAML floats: a hyper-parameter is never one
            raise ConfigError(f"{key}={value!r} must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {type(value).__name__} {value!r}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: cannot read a {_type_name(tp)} from {value!r}")


def from_mapping(cls, data, prefix: str = ""):
    """Builds dataclass `cls` from a mapping, checking keys and types (errors name ``prefix.key``)."""
    where = prefix or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of fields, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        dotted = [f"{prefix}.{k}" if prefix else k for k in unknown]
        raise ConfigError(f"unknown config key(s) {dotted}; known keys{' of ' + prefix if prefix else ''}: {sorted(fields)}")
    kwargs = {name: convert(hints[name], value, f"{prefix}.{name}" if prefix else name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from None


def to_mapping(obj) -> Any:
    """The inverse of `from_mapping`: plain dicts, lists and scalars (for YAML/JSON dumps)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, tuple):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_mapping(v) for k, v in obj.items()}
    return obj
