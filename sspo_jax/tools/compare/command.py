"""``sspo-jax compare``: run a comparison spec (resumably, N runs at a time), then write
summary.json, the PNG figures and report.md. Importing this module is cheap (no JAX)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

DESCRIPTION = """\
Train every run of a comparison spec (configs/compare/*.yaml) once per seed, each as its own
`sspo-jax train` subprocess in RUNS_DIR/<label>/seed<k>, then write summary.json, PNG figures and
report.md to OUT. Running it again skips finished runs and resumes interrupted ones from their
checkpoints; failed runs (e.g. stopped after non-finite steps) are reported as collapsed."""

EPILOG = """\
quick checks never touch the experiment's runs or its committed report: with --steps-override
or --set, RUNS_DIR defaults to runs/compare/<name>-quick; with those or with --seeds/--labels,
OUT defaults to runs/compare/<name>-quick/report:
  sspo-jax compare configs/compare/equal_eps.yaml --steps-override 2 --seeds 0
  sspo-jax compare configs/compare/equal_eps.yaml --labels sspo --seeds 0 --steps-override 2 --set eval.size=16

the experiment, then its report alone (no training) from the runs or from OUT/summary.json:
  sspo-jax compare configs/compare/equal_eps.yaml --jobs 2
  sspo-jax compare configs/compare/equal_eps.yaml --report-only
  sspo-jax compare configs/compare/equal_eps.yaml --from-summary"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Adds the `compare` arguments (spec, --jobs, --out, --runs-dir, quick-check and report-only flags) to `p`."""
    p.add_argument("spec", help="comparison spec YAML (see configs/compare/)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="training subprocesses at a time; with N > 1 each gets its own share of the CPUs")
    p.add_argument("--runs-dir", metavar="DIR", help="run directories (default runs/compare/<name>)")
    p.add_argument("--out", metavar="DIR", help="report directory (default docs/results/<name>)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="K", help="train only these seeds (replaces the spec's)")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="train only these runs of the spec")
    p.add_argument("--steps-override", type=int, metavar="N",
                   help="quick check: set train.steps=N in every run (separate default directories, see below)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", dest="set",
                   help="quick check: one more override for every run (repeatable; separate default directories)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: summarise the runs that exist and rewrite summary.json, figures and report.md")
    p.add_argument("--from-summary", action="store_true",
                   help="train and read nothing: redraw the figures and report.md from OUT/summary.json")
    p.add_argument("--reuse-summary", action="store_true",
                   help="labels with no run directories here keep their seeds from OUT/summary.json when their "
                        "config, overrides, common overrides and seeds match (adds a run to a finished comparison "
                        "without training the others again; the report names where each came from)")
    p.add_argument("--retry-failed", action="store_true",
                   help="delete the directories of failed runs and train them again from scratch")
    p.add_argument("--dry-run", action="store_true", help="print the training commands and exit")


def _quick_overrides(args: argparse.Namespace) -> tuple[str, ...]:
    extra = list(args.set or [])
    if args.steps_override is not None:
        if args.steps_override < 1:
            from sspo_jax.errors import ConfigError

            raise ConfigError(f"--steps-override={args.steps_override} must be >= 1")
        extra.append(f"train.steps={args.steps_override}")
    return tuple(extra)


def default_dirs(name: str, overridden: bool, subset: bool) -> tuple[Path, Path]:
    """(runs dir, report dir) of a spec: the experiment's, or separate ones for quick checks.

    Runs with extra overrides train other configs: they get their own runs dir. A subset of labels
    or seeds trains the experiment's own runs, but its report is not the experiment's report.
    """
    quick = Path("runs/compare") / f"{name}-quick"
    runs = quick if overridden else Path("runs/compare") / name
    out = quick / "report" if overridden or subset else Path("docs/results") / name
    return runs, out


def collect(spec, tasks, records: dict[tuple[str, int], dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per label, the per-seed records of summary.json, read from the run directories."""
    from sspo_jax.tools.compare import runner
    from sspo_jax.tools.compare.summary import as_float, extract_series, read_records, seed_result

    out: dict[str, list[dict[str, Any]]] = {r.label: [] for r in spec.runs}
    for task in tasks:
        status = runner.run_status(task.run_dir, task.steps)
        marker = records.get((task.label, task.seed)) or runner.read_marker(task.run_dir)
        metrics, bad = read_records(task.run_dir)
        series, evals = extract_series(metrics, spec.accuracy_key)
        wall = as_float(marker.get("wall_time_s"))
        if wall is None and status == runner.FINISHED:  # trained outside the runner: the trainer's own clock
            try:
                import json

                wall = as_float(json.loads((task.run_dir / "summary.json").read_text())["wall_time_s"])
            except (OSError, ValueError, KeyError):
                wall = None
        out[task.label].append(seed_result(
            task.seed, status, series, evals, spec, wall_time_s=wall, run_dir=str(task.run_dir),
            returncode=marker.get("returncode"), error=marker.get("error") if status == runner.FAILED else None,
            stderr_tail=marker.get("stderr_tail", "") if status == runner.FAILED else "", unreadable_lines=bad))
    return out


def reuse_summarized(spec, per_label: dict[str, list[dict[str, Any]]], prior: dict[str, Any],
                     extra: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Replaces, in `per_label`, each label whose runs are all missing by its records in `prior` (an
    earlier summary.json of the same spec) and returns, per reused label, where it came from.

    A label is reused only when the earlier summary trained it the same way: the same config file,
    label overrides, common overrides, quick-check overrides, accuracy and collapse rules, and every
    seed asked for now. Anything else raises ConfigError naming the difference, since mixing two
    experiments in one table would be silent.
    """
    from sspo_jax.errors import ConfigError
    from sspo_jax.tools.compare.summary import MISSING

    before = {lab["label"]: lab for lab in prior.get("labels", [])}
    old_spec, now = prior.get("spec", {}), spec.to_mapping()
    origin = {"generated": prior.get("generated"), "git_commit": prior.get("machine", {}).get("git_commit")}
    reused: dict[str, dict[str, Any]] = {}
    for run in spec.runs:
        if any(r["status"] != MISSING for r in per_label.get(run.label, [])) or run.label not in before:
            continue
        lab = before[run.label]
        problems = []
        if lab.get("config") != run.config:
            problems.append(f"config {lab.get('config')!r} != {run.config!r}")
        if list(lab.get("overrides", [])) != list(run.overrides):
            problems.append(f"overrides {lab.get('overrides')} != {list(run.overrides)}")
        if old_spec.get("common") != now["common"]:
            problems.append("the spec's common overrides changed")
        for key in ("accuracy_key", "accuracy_threshold", "collapse"):  # the per-seed verdicts depend on them
            if old_spec.get(key) != now[key]:
                problems.append(f"{key} {old_spec.get(key)!r} != {now[key]!r}")
        if list(prior.get("quick_check_overrides") or []) != list(extra):
            problems.append(f"quick-check overrides {prior.get('quick_check_overrides')} != {list(extra)}")
        seeds = {r["seed"]: r for r in lab.get("per_seed", [])}
        absent = [s for s in spec.seeds if s not in seeds]
        if absent:
            problems.append(f"seeds {absent} are not in it")
        if problems:
            raise ConfigError(f"--reuse-summary: label {run.label!r} of the earlier summary ({origin['generated']}) "
                              f"was trained differently: {'; '.join(problems)}; train it again instead")
        per_label[run.label] = [seeds[s] for s in spec.seeds]
        first = lab.get("reused_from") or origin  # reused twice: where the runs themselves came from
        reused[run.label] = {**first, "command": lab.get("command")}
    return reused


def render(summary: dict[str, Any], out: Path) -> Path:
    """Figures and report.md of a summary into `out`; returns the report's path."""
    from sspo_jax.tools.compare.plots import plot_all
    from sspo_jax.tools.compare.report import render_report

    plot_all(summary, out)
    path = out / "report.md"
    path.write_text(render_report(summary), encoding="utf-8")
    return path


def run(args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    """Runs `sspo-jax compare`: trains the spec's missing runs, then writes summary.json, the plots and report.md; exit code."""
    from sspo_jax.tools.compare.spec import load_spec

    if args.jobs < 1:
        from sspo_jax.errors import ConfigError

        raise ConfigError(f"--jobs={args.jobs} must be >= 1")
    full = load_spec(args.spec)
    spec = full.select(args.labels, args.seeds)
    extra = _quick_overrides(args)
    runs_default, out_default = default_dirs(spec.name, bool(extra), spec.runs != full.runs or spec.seeds != full.seeds)
    runs_root = Path(args.runs_dir) if args.runs_dir else runs_default
    out = Path(args.out) if args.out else out_default

    if args.from_summary:
        from sspo_jax.tools.compare.summary import read_summary

        path = render(read_summary(out / "summary.json"), out)
        echo(f"wrote {path} and its figures from {out / 'summary.json'}")
        return 0

    from sspo_jax.tools.compare import runner
    from sspo_jax.tools.compare.summary import build_summary, machine_info, write_summary

    tasks = runner.plan(spec, runs_root, extra)  # validates every run's config first
    if args.dry_run:
        for task in tasks:
            echo(runner.command_line(task))
        return 0
    records: dict[tuple[str, int], dict[str, Any]] = {}
    if not args.report_only:
        echo(f"comparison {spec.name}: {len(spec.runs)} runs x {len(spec.seeds)} seeds in {runs_root}, "
             f"{args.jobs} at a time")
        try:
            records = runner.run_tasks(tasks, jobs=args.jobs, retry_failed=args.retry_failed, echo=echo)
        except KeyboardInterrupt:
            echo("interrupted: the running trainings were stopped; run the same command again to resume them "
                 "from their checkpoints")
            return 130
    per_label = collect(spec, tasks, records)
    nothing = all(r["status"] == "missing" for seeds in per_label.values() for r in seeds)
    if args.report_only and nothing and not args.reuse_summary:
        echo(f"warning: no run of {spec.name} exists under {runs_root}: the report lists every run as missing")
    reused: dict[str, dict[str, Any]] = {}
    if args.reuse_summary:
        from sspo_jax.tools.compare.summary import read_summary

        prior_path = out / "summary.json"
        if not prior_path.is_file():
            from sspo_jax.errors import ConfigError

            raise ConfigError(f"--reuse-summary: {prior_path} does not exist")
        reused = reuse_summarized(spec, per_label, read_summary(prior_path), extra)
        for label, origin in reused.items():
            echo(f"  {label}: {len(per_label[label])} seeds reused from {prior_path} ({origin['generated']})")
    commands = {}
    for task in tasks:
        commands.setdefault(task.label, runner.command_line(task))
    jobs = args.jobs
    if args.report_only:  # the runs' own record of how many ran at a time
        seen = [runner.read_marker(t.run_dir).get("jobs") for t in tasks]
        seen = [j for j in seen if isinstance(j, int)]
        jobs = max(seen, default=jobs)
    summary = build_summary(spec, per_label, machine=machine_info(jobs), extra_overrides=extra,
                            commands=commands, reused=reused)
    write_summary(summary, out)
    path = render(summary, out)
    for lab in summary["labels"]:
        a = lab["aggregate"]
        final = "–" if a["final_accuracy_mean"] is None else f"{a['final_accuracy_mean']:.3f}"
        echo(f"  {lab['label']:>14}: final {spec.accuracy_key} {final} over {a['finished']}/{a['seeds']} finished, "
             f"{a['collapsed']} collapsed")
    echo(f"wrote {out / 'summary.json'} and {path}")
    return 0
