"""Multi-run algorithm comparisons: a spec of train configs x seeds, a resumable runner of
``sspo-jax train`` subprocesses, and a report (summary.json, PNG figures, report.md).

    sspo-jax compare configs/compare/equal_eps.yaml --jobs 2

Modules: `spec` (the YAML spec and its validation), `runner` (subprocesses, resume, failures),
`summary` (metric series, collapse and threshold verdicts, aggregates), `plots` and `report`
(figures and markdown from summary.json alone), `command` (the CLI subcommand).
"""

from sspo_jax.tools.compare.spec import CollapseRule, CompareSpec, RunSpec, load_spec, spec_from_mapping

__all__ = ["CollapseRule", "CompareSpec", "RunSpec", "load_spec", "spec_from_mapping"]
