"""The experiment spec of an algorithm comparison: which train configs, which overrides, which seeds,
and how the report judges the runs (accuracy key, threshold, collapse rule).

A spec is a YAML file (see configs/compare/)::

    name: equal_eps
    description: |
      Markdown that opens the report.
    seeds: [0, 1, 2, 3, 4]
    common:                        # dotted overrides applied to every run
      train.steps: 40
      data.batch_size: 16
    runs:
      - {label: grpo, config: configs/tiny_grpo.yaml, overrides: {algorithm.eps_high: 0.28}}
      - {label: sspo, config: configs/tiny_sspo.yaml}
    accuracy_key: eval/accuracy    # default: greedy held-out accuracy
    accuracy_threshold: 0.5        # for "steps to reach"
    collapse: {margin: 0.05, last_evals: 2}

Each run trains ``config`` with ``common``, then the run's ``overrides``, then ``train.seed=<seed>``
applied on top. Relative config paths are relative to the current directory. Every error is a
`ConfigError` naming the spec file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Optional

from sspo_jax.errors import ConfigError

DEFAULT_ACCURACY_KEY = "eval/accuracy"
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class CollapseRule:
    """When a run counts as collapsed.

    A run collapses when it failed (non-zero exit, e.g. the trainer's stop after
    ``train.max_consecutive_skips`` non-finite steps), when a logged value of the accuracy key,
    ``policy/loss`` or ``policy/grad_norm`` is NaN or infinite, or when its held-out accuracy is
    below ``initial - margin`` at each of its last ``last_evals`` evaluations (a dip that recovers
    is not a collapse).

    Attributes:
      margin: accuracy (a fraction, 0.05 = 5 points) below the initial accuracy that counts as a drop.
      last_evals: K, the number of final evaluations that must all be below the drop line.
    """

    margin: float = 0.05
    last_evals: int = 2

    def describe(self, accuracy_key: str) -> str:
        """The collapse rule in words, as the report states it."""
        k = self.last_evals
        evals = "evaluation" if k == 1 else f"{k} evaluations"
        return (f"a run counts as collapsed when it failed (non-zero exit, e.g. the trainer stopped after "
                f"`train.max_consecutive_skips` consecutive non-finite steps), when a logged `{accuracy_key}`, "
                f"`policy/loss` or `policy/grad_norm` is NaN or infinite, or when `{accuracy_key}` is below its "
                f"initial value minus {self.margin:g} at each of its last {evals} (a run with fewer evaluations "
                f"after the initial one is judged on those it has); a drop that recovers is not a collapse")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One compared configuration (trained once per seed).

    Attributes:
      label: the name in the report and the run directory (letters, digits, ``_ . -``).
      config: path of a train config YAML (e.g. configs/tiny_sspo.yaml).
      overrides: dotted ``key=value`` overrides applied after the spec's common ones.
    """

    label: str
    config: str
    overrides: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class CompareSpec:
    """A whole comparison: runs x seeds and the report's judgement knobs.

    Attributes:
      name: the experiment's name (run directories runs/compare/<name>, report docs/results/<name>).
      description: markdown placed at the top of the report (the question and the setup).
      findings: markdown placed after the results table: what the numbers show, written by a
        person after reading them (empty until then).
      seeds: ``train.seed`` of each repetition.
      common: dotted ``key=value`` overrides applied to every run.
      runs: the compared configurations.
      accuracy_key: the metric the report calls accuracy (logged at evaluation steps).
      accuracy_threshold: the accuracy whose first reach is reported as "steps to reach".
      collapse: the collapse rule.
      path: the file the spec was read from (None when built in code).
    """

    name: str
    runs: tuple[RunSpec, ...]
    description: str = ""
    findings: str = ""
    seeds: tuple[int, ...] = (0,)
    common: tuple[str, ...] = ()
    accuracy_key: str = DEFAULT_ACCURACY_KEY
    accuracy_threshold: float = 0.5
    collapse: CollapseRule = CollapseRule()
    path: Optional[str] = None

    @property
    def labels(self) -> list[str]:
        """The run labels, in spec order."""
        return [r.label for r in self.runs]

    def run(self, label: str) -> RunSpec:
        """The run labelled `label`; ConfigError naming the known labels otherwise."""
        for r in self.runs:
            if r.label == label:
                return r
        raise ConfigError(f"{self.path or self.name}: no run labelled {label!r}; labels: {self.labels}")

    def select(self, labels: Optional[list[str]] = None, seeds: Optional[list[int]] = None) -> "CompareSpec":
        """The spec restricted to some labels and/or replaced seeds (quick checks)."""
        runs = self.runs if not labels else tuple(self.run(label) for label in labels)
        new_seeds = self.seeds if seeds is None else _check_seeds(list(seeds), "--seeds")
        return dataclasses.replace(self, runs=runs, seeds=new_seeds)

    def to_mapping(self) -> dict[str, Any]:
        """A JSON-able mapping (overrides as ``key=value`` strings)."""
        return {"name": self.name, "description": self.description, "findings": self.findings,
                "seeds": list(self.seeds),
                "common": list(self.common),
                "runs": [{"label": r.label, "config": r.config, "overrides": list(r.overrides)} for r in self.runs],
                "accuracy_key": self.accuracy_key, "accuracy_threshold": self.accuracy_threshold,
                "collapse": dataclasses.asdict(self.collapse), "path": self.path}

    @classmethod
    def from_summary_mapping(cls, data: dict[str, Any]) -> "CompareSpec":
        """The inverse of `to_mapping` (for re-rendering a report from summary.json)."""
        return cls(name=data["name"], description=data.get("description", ""),
                   findings=data.get("findings", ""), seeds=tuple(data["seeds"]),
                   common=tuple(data.get("common", ())),
                   runs=tuple(RunSpec(r["label"], r["config"], tuple(r.get("overrides", ()))) for r in data["runs"]),
                   accuracy_key=data.get("accuracy_key", DEFAULT_ACCURACY_KEY),
                   accuracy_threshold=float(data.get("accuracy_threshold", 0.5)),
                   collapse=CollapseRule(**data.get("collapse", {})), path=data.get("path"))


def override_string(key: str, value: Any) -> str:
    """``key=value`` that `sspo_jax.train.config_io.apply_overrides` parses back to `value`."""
    if isinstance(value, str):
        return f"{key}={value}"
    return f"{key}={json.dumps(value)}"


_TOP_KEYS = ("name", "description", "findings", "seeds", "common", "runs", "accuracy_key", "accuracy_threshold", "collapse")
_RUN_KEYS = ("label", "config", "overrides")
_COLLAPSE_KEYS = ("margin", "last_evals")


def _check_seeds(seeds: Any, where: str) -> tuple[int, ...]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"{where} must be a non-empty list of integer seeds like [0, 1, 2], got {seeds!r}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"{where} must hold integers >= 0, got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where} repeats a seed: {seeds}")
    return tuple(seeds)


def _overrides(value: Any, where: str) -> tuple[str, ...]:
    """Overrides given as a mapping ``{key.sub: value}`` (or a list of ``key.sub=value`` strings)."""
    if value is None:
        return ()
    if isinstance(value, dict):
        out = []
        for key, v in value.items():
            if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
                raise ConfigError(f"{where}: {key!r} is not a dotted config key like train.steps")
            if isinstance(v, dict):
                raise ConfigError(f"{where}.{key}: set nested values key by key ({key}.sub: value), "
                                  f"not as a mapping {v!r}")
            out.append(override_string(key, v))
        return tuple(out)
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(f"{where}: {item!r} must look like key.sub=value")
        return tuple(value)
    raise ConfigError(f"{where} must be a mapping of dotted keys to values (e.g. {{train.steps: 40}}), "
                      f"got {type(value).__name__} {value!r}")


def _number(value: Any, where: str, *, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ConfigError(f"{where} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def spec_from_mapping(data: Any, source: str = "<spec>") -> CompareSpec:
    """Validates a parsed spec; errors name `source` (the file) and the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with name, seeds, runs, ..., "
                          f"got {type(data).__name__}")
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; known keys: {list(_TOP_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not LABEL_PATTERN.match(name):
        raise ConfigError(f"{source}: name must be a non-empty name of letters, digits, '_', '.', '-' "
                          f"(it names the run and report directories), got {name!r}")
    description = data.get("description", "") or ""
    if not isinstance(description, str):
        raise ConfigError(f"{source}: description must be markdown text, got {type(description).__name__}")
    findings = data.get("findings", "") or ""
    if not isinstance(findings, str):
        raise ConfigError(f"{source}: findings must be markdown text, got {type(findings).__name__}")
    seeds = _check_seeds(data.get("seeds", [0]), f"{source}: seeds")
    common = _overrides(data.get("common"), f"{source}: common")

    runs_raw = data.get("runs")
    if not isinstance(runs_raw, list) or not runs_raw:
        raise ConfigError(f"{source}: runs must be a non-empty list of {{label, config, overrides}}, got {runs_raw!r}")
    runs: list[RunSpec] = []
    for i, item in enumerate(runs_raw):
        where = f"{source}: runs[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be a mapping {{label, config, overrides}}, got {item!r}")
        label = item.get("label")
        unknown = sorted(set(item) - set(_RUN_KEYS))
        if unknown:
            named = f"{where} ({label})" if isinstance(label, str) else where
            raise ConfigError(f"{named}: unknown key(s) {unknown}; known keys: {list(_RUN_KEYS)}")
        if not isinstance(label, str) or not LABEL_PATTERN.match(label):
            raise ConfigError(f"{where}.label must be a name of letters, digits, '_', '.', '-' (it names a run "
                              f"directory), got {label!r}")
        where = f"{source}: runs[{i}] ({label})"
        if label in {r.label for r in runs}:
            raise ConfigError(f"{where}: the label {label!r} is used twice; labels must be unique")
        config = item.get("config")
        if not isinstance(config, str) or not config:
            raise ConfigError(f"{where}.config must be the path of a train config YAML, got {config!r}")
        if not Path(config).is_file():
            raise ConfigError(f"{where}.config: {config!r} does not exist (relative paths are relative to the "
                              f"current directory {str(Path.cwd())!r})")
        runs.append(RunSpec(label, config, _overrides(item.get("overrides"), f"{where}.overrides")))

    key = data.get("accuracy_key", DEFAULT_ACCURACY_KEY)
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{source}: accuracy_key must be a metric name like {DEFAULT_ACCURACY_KEY!r}, got {key!r}")
    threshold = _number(data.get("accuracy_threshold", 0.5), f"{source}: accuracy_threshold", lo=0.0, hi=1.0)

    collapse_raw = data.get("collapse", {}) or {}
    if not isinstance(collapse_raw, dict):
        raise ConfigError(f"{source}: collapse must be a mapping {{margin, last_evals}}, got {collapse_raw!r}")
    unknown = sorted(set(collapse_raw) - set(_COLLAPSE_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {['collapse.' + k for k in unknown]}; known keys: "
                          f"{['collapse.' + k for k in _COLLAPSE_KEYS]}")
    margin = _number(collapse_raw.get("margin", CollapseRule.margin), f"{source}: collapse.margin", lo=0.0, hi=1.0)
    last = collapse_raw.get("last_evals", CollapseRule.last_evals)
    if isinstance(last, bool) or not isinstance(last, int) or last < 1:
        raise ConfigError(f"{source}: collapse.last_evals must be an integer >= 1, got {last!r}")
    return CompareSpec(name=name, description=description.strip(), findings=findings.strip(), seeds=seeds, common=common, runs=tuple(runs),
                       accuracy_key=key, accuracy_threshold=threshold, collapse=CollapseRule(margin, last),
                       path=source)


def load_spec(path: str | Path) -> CompareSpec:
    """Reads and validates a spec YAML file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"comparison spec {str(path)!r} does not exist (see configs/compare/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: YAML syntax error{at}: {getattr(err, 'problem', None) or err}") from None
    return spec_from_mapping(data, str(path))


def run_overrides(spec: CompareSpec, run: RunSpec, seed: int, extra: tuple[str, ...] = ()) -> list[str]:
    """The overrides of one (run, seed) in the order they apply: common, the run's, `extra`, the seed."""
    return [*spec.common, *run.overrides, *extra, f"train.seed={seed}"]


def validate_train_configs(spec: CompareSpec, extra: tuple[str, ...] = ()):
    """Builds every run's `TrainConfig` (first seed) so that a bad key fails before anything trains.

    Returns {label: TrainConfig}; a `ConfigError` names the spec file, the label and the key.
    """
    from sspo_jax.train.config import load_config

    out = {}
    for run in spec.runs:
        try:
            out[run.label] = load_config(run.config, run_overrides(spec, run, spec.seeds[0], extra))
        except ConfigError as err:
            raise ConfigError(f"{spec.path or spec.name}: run {run.label!r} ({run.config}): {err}") from None
    return out
