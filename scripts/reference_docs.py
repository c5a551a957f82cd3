"""Generated reference documentation: the configuration reference and the metrics glossary.

`render_configuration_reference()` walks the `TrainConfig` dataclass tree (model, algorithm with
its segmentation, sampling, data with its arithmetic task, rewards, optim, train, eval,
checkpoint, logging) and renders one Markdown table per section with each key's type, default and
description. Descriptions are parsed from the ``Attributes:``-style sections of the class
docstrings (``name: text`` or ``a, b: shared text`` entries, continuation lines indented deeper);
a field without a description, or a described name that is not a field, is an error, so the
reference cannot drift from the code. `render_metrics_glossary()` renders `METRICS`, the meaning
of every key that the trainer writes to ``RUN_DIR/metrics.jsonl`` (``<name>`` stands for a
reward name, ``<k>`` for a number).

``scripts/gen_docs.py`` writes both to ``docs/configuration.md`` and ``docs/metrics.md``; the
tests check that the committed files equal a fresh rendering.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
from typing import Any, Literal, Union

from sspo_jax.algorithms import presets
from sspo_jax.algorithms.config import AlgorithmConfig

_ENTRY = re.compile(r"^(?P<indent>\s+)(?P<names>[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*):\s(?P<text>.*)$")
_HEADER = re.compile(r"^\S.*:$")


class DocsError(ValueError):
    """A config dataclass's docstring does not describe its fields one to one."""


# ---- docstring parsing ---------------------------------------------------------------------------

def field_descriptions(cls: type) -> dict[str, str]:
    """Field name -> description, parsed from the class docstring's attribute sections.

    A section starts at an unindented line ending with ``:`` (``Attributes:``, or a topical
    header such as ``Ratio and clipping:``). Inside it, an entry is a line indented one level,
    ``name: text`` or ``name_a, name_b: text`` (the text is shared), and continues on the lines
    indented deeper. Raises `DocsError` when a field has no entry or an entry names no field.
    """
    doc = inspect.getdoc(cls) or ""
    fields = [f.name for f in dataclasses.fields(cls)]
    out: dict[str, list[str]] = {}
    current: list[str] = []
    in_section = False
    entry_indent: int | None = None
    for line in doc.splitlines():
        if not line.strip():
            continue
        if _HEADER.match(line):
            in_section, entry_indent, current = True, None, []
            continue
        if not in_section:
            continue
        if not line[0].isspace():  # unindented prose ends the section
            in_section, current = False, []
            continue
        indent = len(line) - len(line.lstrip())
        match = _ENTRY.match(line)
        if match and (entry_indent is None or indent == entry_indent):
            entry_indent = indent
            names = [n.strip() for n in match.group("names").split(",")]
            unknown = [n for n in names if n not in fields]
            if unknown:
                raise DocsError(f"{cls.__name__} docstring describes {unknown}, which are not fields of "
                                f"{cls.__name__} (fields: {fields})")
            current = names
            for n in names:
                if n in out:
                    raise DocsError(f"{cls.__name__} docstring describes {n!r} twice")
                out[n] = [match.group("text").strip()]
        elif current and entry_indent is not None and indent > entry_indent:
            for n in current:
                out[n].append(line.strip())
        elif entry_indent is not None and indent <= entry_indent:  # a note after the entries
            in_section, current = False, []
        else:
            raise DocsError(f"{cls.__name__} docstring: cannot parse the line {line.strip()!r} "
                            "(write 'name: description' entries, continuation lines indented deeper)")
    missing = [f for f in fields if f not in out]
    if missing:
        raise DocsError(f"{cls.__name__} docstring has no description of the field(s) {missing}: add "
                        "'name: description' lines to its Attributes section")
    return {n: " ".join(parts) for n, parts in out.items()}


# ---- rendering helpers -----------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    """A compact, YAML-minded rendering of a type annotation."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        inner = " \\| ".join(_type_name(a) for a in parts)
        return f"{inner} \\| null" if len(parts) < len(args) else inner
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            if typing.get_origin(args[0]) is tuple:
                k, v = typing.get_args(args[0])
                return f"mapping {_type_name(k)} -> {_type_name(v)}"
            return f"list of {_type_name(args[0])}"
        return "tuple"
    if dataclasses.is_dataclass(tp):
        return f"section ({tp.__name__})"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _value(value: Any) -> str:
    """A default value as YAML would write it, in a code span."""
    if dataclasses.is_dataclass(value):
        return "(section)"
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, tuple):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            text = "{" + ", ".join(f"{k}: {_plain(v)}" for k, v in value) + "}"
        else:
            text = "[" + ", ".join(_plain(v) for v in value) + "]"
    else:
        text = _plain(value)
    return "`" + text.replace("|", "\\|") + "`"


def _plain(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _table(cls: type, prefix: str, defaults: Any = None, extra_rows: list[tuple[str, str, str, str]] = (),
           skip: tuple[str, ...] = ()) -> tuple[str, list[tuple[str, type, str]]]:
    """One Markdown table of `cls`'s fields; returns it and the nested dataclass sections found."""
    descriptions = field_descriptions(cls)
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    rows += [f"| {k} | {t} | {d} | {desc} |" for k, t, d, desc in extra_rows]
    nested: list[tuple[str, type, str]] = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        desc = descriptions[f.name]
        if dataclasses.is_dataclass(tp):
            nested.append((key, tp, desc))
            rows.append(f"| `{key}` | section | see [`{key}`](#{_anchor(key)}) | {_cell(desc)} |")
            continue
        type_name = _type_name(tp)
        shown = "`{}`" if type_name.startswith("mapping") and default == () else _value(default)
        rows.append(f"| `{key}` | {type_name} | {shown} | {_cell(desc)} |")
    return "\n".join(rows), nested


def _anchor(key: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "", key.lower().replace(" ", "-"))


def _section(title: str, cls: type, prefix: str, intro: str, **table_kwargs) -> list[str]:
    table, nested = _table(cls, prefix, **table_kwargs)
    parts = [f"## `{title}`", "", intro, "", table, ""]
    for key, sub, desc in nested:
        sub_default = None
        if "defaults" in table_kwargs and table_kwargs["defaults"] is not None:
            sub_default = getattr(table_kwargs["defaults"], key.rsplit(".", 1)[-1])
        sub_table, deeper = _table(sub, key, defaults=sub_default)
        if deeper:
            raise DocsError(f"{sub.__name__} nests sections two levels deep; extend reference_docs")
        parts += [f"### `{key}`", "", f"`{sub.__name__}`: {_cell(desc)}", "", sub_table, ""]
    return parts


def _section_class(tp: Any) -> type | None:
    """The dataclass of a section annotation (``X`` or ``Optional[X]``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    first = doc.split("\n\n", 1)[0]
    return " ".join(first.split())


def _paper_table() -> str:
    """Each preset with its paper and what it sets (`presets.PAPERS`)."""
    missing = [n for n in presets.names() if n not in presets.PAPERS]
    if missing:
        raise DocsError(f"presets {missing} have no entry in sspo_jax.algorithms.presets.PAPERS")
    rows = ["| preset | paper | what it sets |", "|---|---|---|"]
    for name in presets.names():
        paper, what = presets.PAPERS[name]
        rows.append(f"| `{name}` | {_cell(paper)} | {_cell(what)} |")
    return "\n".join(rows)


def _preset_table() -> str:
    """Fields in which at least one preset differs from the `AlgorithmConfig` defaults."""
    names = presets.names()
    base = AlgorithmConfig()
    rows = ["| key | `AlgorithmConfig()` | " + " | ".join(f"`{n}`" for n in names) + " |",
            "|---|---|" + "---|" * len(names)]
    for f in dataclasses.fields(AlgorithmConfig):
        if f.name == "name":
            continue
        if f.name == "segmentation":
            for sf in dataclasses.fields(type(base.segmentation)):
                vals = [getattr(presets.get(n).segmentation, sf.name) for n in names]
                ref = getattr(base.segmentation, sf.name)
                if any(v != ref for v in vals):
                    rows.append(f"| `segmentation.{sf.name}` | {_value(ref)} | "
                                + " | ".join(_value(v) for v in vals) + " |")
            continue
        vals = [getattr(presets.get(n), f.name) for n in names]
        ref = getattr(base, f.name)
        if any(v != ref for v in vals):
            rows.append(f"| `{f.name}` | {_value(ref)} | " + " | ".join(_value(v) for v in vals) + " |")
    return "\n".join(rows)


# ---- the configuration reference -----------------------------------------------------------------

def render_configuration_reference() -> str:
    """The Markdown configuration reference (``docs/configuration.md``), generated from the
    dataclasses of `sspo_jax.train.config` and the classes they embed."""
    from sspo_jax.train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    top_desc = field_descriptions(TrainConfig)
    job = TrainConfig()  # section defaults as a job sees them (algorithm = the sspo preset)
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/gen_docs.py from the config dataclasses; do not edit by hand. -->",
        "",
        "A training job is one `TrainConfig` (`sspo_jax/train/config.py`), read from YAML with "
        "`load_config(path, overrides)` or `sspo-jax train --config FILE --set key.sub=value`. Every "
        "section and key is optional; an unknown key, a wrong type or an impossible value is an error "
        "naming the key. A YAML file may start with `include: base.yaml` (deep-merged under its own "
        "keys). Defaults below are those of `TrainConfig()` (the `sspo` preset, `data.group_size` = its "
        "`group_size`); `configs/*.yaml` override many of them.",
        "",
        "Sections: " + ", ".join(
            f"[`{f.name}`](#{_anchor(f.name)})" for f in dataclasses.fields(TrainConfig)
            if _section_class(hints[f.name])) + ", and the top-level keys below.",
        "",
        "## Top-level keys",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    for f in dataclasses.fields(TrainConfig):
        if not _section_class(hints[f.name]):
            out.append(f"| `{f.name}` | {_type_name(hints[f.name])} | {_value(_default(f))} | "
                       f"{_cell(top_desc[f.name])} |")
    out.append("")
    for f in dataclasses.fields(TrainConfig):
        cls = _section_class(hints[f.name])
        if cls is None:
            continue
        intro = f"`{cls.__name__}` (`{cls.__module__}`): {_cell(_summary(cls))}"
        section_default = getattr(job, f.name)
        if section_default is None:
            desc = _cell(top_desc[f.name])
            intro += (f" {desc[:1].upper() + desc[1:]} The section is optional and absent (`null`) by default; "
                      "the defaults below apply to keys a present section leaves out.")
        if f.name == "algorithm":
            out += _section(
                f.name, cls, f.name,
                intro + " The section starts from the preset named by `algorithm.preset` and any field "
                "below overrides it; the defaults shown are those of the `sspo` preset (the default "
                "preset). The table after this section lists what each preset sets.",
                defaults=job.algorithm,
                extra_rows=[("`algorithm.preset`", " \\| ".join(json.dumps(n) for n in presets.names()),
                             '`"sspo"`', "the preset the section starts from (`sspo_jax/algorithms/presets.py`).")])
            out += ["### Presets", "",
                    "Each preset, its paper and what it sets (`PAPERS` in `sspo_jax/algorithms/presets.py`):", "",
                    _paper_table(), "",
                    "### Preset values", "",
                    "Fields in which some preset differs from the plain `AlgorithmConfig()` defaults:", "",
                    _preset_table(), ""]
        else:
            out += _section(f.name, cls, f.name, intro, defaults=section_default)
    return "\n".join(out).rstrip() + "\n"


# ---- the metrics glossary ------------------------------------------------------------------------

# key (``<name>``: a reward name, ``<k>``: a number) -> (when it is logged, meaning)
METRICS: dict[str, tuple[str, str]] = {
    "step": ("always", "the RL iteration the record belongs to (0 = the evaluation before training)."),
    # rewards and accuracy of the rollout
    "reward/mean": ("always", "mean total reward of the step's responses (after DAPO's overlong penalty; "
                              "masked-out filler rows excluded)."),
    "reward/std": ("always", "standard deviation of that total reward over the step's responses."),
    "reward/total_mean": ("always", "mean weighted sum of the reward functions, before the overlong penalty."),
    "reward/failures": ("always", "responses whose verifier raised or whose worker crashed (scored 0), over "
                                  "all reward functions."),
    "reward/timeouts": ("always", "responses whose verification exceeded `rewards.timeout_s` (scored 0), over "
                                  "all reward functions."),
    "reward/<name>/mean": ("always", "mean score of reward function `<name>` (one per entry of `rewards.weights`)."),
    "reward/<name>/failures": ("always", "responses that reward `<name>` failed to score (counted as 0)."),
    "reward/<name>/timeouts": ("always", "responses whose verification by `<name>` timed out (counted as 0)."),
    "reward/<name>/no_answer": ("always", "responses with no answer in the form `<name>` expects (scored 0; "
                                          "not an error)."),
    "reward/<name>/gold_unparsed": ("always", "responses whose gold answer `<name>` cannot parse (math-verify: "
                                              "malformed LaTeX, NaN; scored 0); above "
                                              "`rewards.max_gold_unparsed_frac` of a step's responses the run "
                                              "stops naming the data file and line of one."),
    "data/prompts_truncated": ("always", "prompts of the step cut to their last `data.max_prompt_len` tokens "
                                         "(`data.overlong_prompt=truncate`); the run's total is in summary.json."),
    "data/prompts_rejected": ("always", "over-long prompts skipped while filling the step's batch "
                                        "(`data.overlong_prompt=reject`); the run's total is in summary.json."),
    "reward/overlong_penalty_mean": ("`algorithm.overlong_buffer_frac` set (DAPO)",
                                     "mean soft overlong penalty added to the reward (in [-w, 0] with w = "
                                     "overlong_penalty_factor * overlong_reward_span / 2)."),
    "accuracy": ("always", "fraction of the step's responses that the correctness reward (`eval.reward`) "
                           "scores 1: training accuracy at the sampling temperature."),
    "response_length/mean": ("always", "mean response length in tokens (stop token included)."),
    "response_length/max": ("always", "longest response of the step in tokens."),
    "truncated_frac": ("always", "fraction of responses that hit `sampling.max_new_tokens` without a stop token."),
    # dynamic sampling
    "dynamic_sampling/rounds": ("`algorithm.dynamic_sampling` (DAPO)", "generation rounds used to fill the batch."),
    "dynamic_sampling/kept_groups": ("`algorithm.dynamic_sampling` (DAPO)",
                                     "groups kept for the update because their `algorithm.dynamic_sampling_metric` "
                                     "(correctness by default, or the total reward) varies."),
    "dynamic_sampling/filler_groups": ("`algorithm.dynamic_sampling` (DAPO)",
                                       "groups added with an all-zero mask because `max_sampling_rounds` ran out "
                                       "(they train on nothing)."),
    # advantages and statistics of the rollout
    "zero_variance_group_frac": ("group advantages", "fraction of groups whose rewards are all equal (their "
                                                     "advantages are exactly 0)."),
    "value_mean": ("`advantage=gae` (PPO)", "mean old token value V over valid response tokens."),
    "kl_in_reward_mean": ("`algorithm.kl_in_reward_beta` > 0 (PPO)",
                          "mean per-token KL of the behaviour policy to the reference (estimator "
                          "`algorithm.kl_in_reward_estimator`) over valid response tokens; each token's reward "
                          "carries -kl_in_reward_beta times its KL."),
    "critic_value_mean": ("`advantage=sequence_baseline` (SPPO)", "mean predicted success probability "
                                                                  "sigmoid(z(x)) of the prompt critic."),
    "advantage/mean": ("always", "mean advantage over valid response tokens."),
    "advantage/std": ("always", "standard deviation of the advantage over valid response tokens."),
    "advantage/min": ("always", "smallest advantage of a valid response token."),
    "advantage/max": ("always", "largest advantage of a valid response token."),
    "sampler_logp_abs_diff": ("always", "mean |logp_old - logp_sampler| over valid tokens: the trainer's forward "
                                        "vs the sampler's log-probs (should be ~0; large values mean the ratios "
                                        "are off-policy). The stats pass's forward, or, when the stats pass skips "
                                        "the old log-probs (one on-policy update per step with "
                                        "`train.exact_on_policy_ratio` and no entropy-dependent loss), the "
                                        "update's forward, which then is the old policy's."),
    "sampler_logp_abs_diff_max": ("always", "largest such difference of a token."),
    "old_entropy_mean": ("always", "mean entropy (nats) of the old policy's next-token distribution over valid "
                                   "response tokens (from the same forward as `sampler_logp_abs_diff`)."),
    # the update (means over epochs x minibatches; _min/_max are extremes)
    "policy/loss": ("always", "policy loss loss_sum / denominator, mean over the step's minibatch updates."),
    "policy/grad_norm": ("always", "global norm of the policy gradient before clipping, mean over updates."),
    "policy/clip_frac_low": ("always", "fraction of valid tokens clipped at the lower bound (A < 0 and "
                                       "rho < 1 - eps_low * g). GMPO: tokens whose log-ratio was clipped in log "
                                       "space; CISPO: tokens whose weight was truncated below, whatever A's sign."),
    "policy/clip_frac_high": ("always", "fraction of valid tokens clipped at the upper bound (A > 0 and "
                                        "rho > 1 + eps_high * g); GMPO and CISPO as for `clip_frac_low`."),
    "policy/cov_selected_frac": ("`algorithm.policy_loss_kind` clip_cov or kl_cov",
                                 "fraction of valid tokens the covariance rule selected: detached (Clip-Cov) or "
                                 "KL-penalised (KL-Cov)."),
    "policy/entropy_mask_frac": ("`algorithm.entropy_mask_percentile` set (top_entropy)",
                                 "fraction of valid tokens at or above the batch's entropy percentile, the only "
                                 "ones the policy term trains on."),
    "policy/clip_frac_dual": ("always", "fraction of valid tokens whose loss the dual clip capped at -c A "
                                        "(0 without `dual_clip`)."),
    "policy/seg_clip_frac_low": ("always", "fraction of segments (units of the ratio) with a token clipped low."),
    "policy/seg_clip_frac_high": ("always", "fraction of segments with a token clipped high."),
    "policy/escape_frac": ("always", "fraction of valid tokens whose own ratio exp(logp - logp_old) is past "
                           "the bound the clip enforces for their advantage's sign while their unit's ratio is not "
                           "clipped and the token guard did not stop it: what a segment or sequence mean lets "
                           "through (0 at token granularity, and with `algorithm.token_guard`)."),
    "policy/guard_frac_low": ("always", "fraction of valid tokens with A < 0 whose own ratio fell below "
                                        "1 - e_lo_tok while their unit was not clipped: their gradient is stopped by "
                                        "`algorithm.token_guard` (0 with the guard off)."),
    "policy/guard_frac_high": ("always", "the same for A > 0 and a token ratio above 1 + e_hi_tok."),
    "policy/guard_frac": ("always", "`policy/guard_frac_low` + `policy/guard_frac_high`."),
    "policy/ratio_mean": ("always", "mean importance ratio rho applied at valid tokens."),
    "policy/ratio_min": ("always", "smallest ratio applied at a valid token."),
    "policy/ratio_max": ("always", "largest ratio applied at a valid token."),
    "policy/onpolicy_ratio_dev_max": ("the stats pass computed the old log-probs",
                                      "largest |exp(logp - logp_old) - 1| of a valid token in the on-policy "
                                      "minibatch (the first of the first epoch): the update's forward against the "
                                      "stats pass's, i.e. the numerics of two forwards (~0.1 in bf16 compute). With "
                                      "`train.exact_on_policy_ratio` the loss does not see it (its ratios there are "
                                      "exactly 1); without, this is how far from 1 its on-policy ratios are."),
    "policy/approx_kl": ("always", "k3 estimate of KL(pi_old || pi_theta) over valid tokens (how far the update "
                                   "moved the policy)."),
    "policy/kl": ("`algorithm.kl_beta > 0` (GRPO)", "mean per-token KL penalty to the reference policy "
                                                    "(`kl_estimator`), as added to the loss before beta."),
    "policy/g_mean": ("always", "mean entropy scale g of the clip bounds over valid tokens (1 without entropy "
                                "scaling)."),
    "policy/g_min": ("always", "smallest entropy scale g."),
    "policy/g_max": ("always", "largest entropy scale g."),
    "policy/eps_low": ("always", "configured eps_low (before entropy scaling)."),
    "policy/eps_high": ("always", "configured eps_high (before entropy scaling)."),
    "policy/segments_per_response": ("always", "mean number of ratio units (segments) per non-empty response "
                                               "(= length at token granularity, 1 at sequence granularity)."),
    "policy/mean_segment_length": ("always", "mean number of tokens per segment."),
    "policy/entropy": ("`algorithm.entropy_alpha > 0` (SSPO)", "mean old-policy token entropy seen by the loss."),
    "policy/critic_loss": ("a critic (PPO, SPPO)", "value loss (clipped MSE, PPO) or BCE (SPPO) of the critic, "
                                                   "times value_coef."),
    "policy/critic_grad_norm": ("a critic (PPO, SPPO)", "global norm of the critic's gradient."),
    "skipped_updates": ("always", "minibatch updates skipped because the loss or a gradient was not finite."),
    "updates": ("always", "minibatch updates attempted this step (ppo_epochs x num_minibatches)."),
    "consecutive_skipped_steps": ("always", "steps in a row all of whose updates were skipped (the run stops at "
                                            "`train.max_consecutive_skips`)."),
    "lr": ("always", "policy learning rate of this step's first update: the schedule at the policy optimizer's "
                     "update count before the step (0 at step 1 with warmup; during critic warm-up, the lr its "
                     "first update will use)."),
    # timing
    "time/generate_and_score": ("always", "seconds spent generating responses and computing rewards."),
    "time/stats": ("always", "seconds of the old-policy statistics pass (log-probs, entropies, reference, "
                             "critic), segments and advantages."),
    "time/update": ("always", "seconds of the jitted update (all epochs and minibatches)."),
    "time/step": ("always", "seconds of the whole RL iteration (evaluation excluded)."),
    "tokens_per_s": ("always", "valid response tokens of the step divided by time/step."),
    # evaluation
    "eval/accuracy": ("evaluation steps", "greedy held-out accuracy (mean of the `eval.reward` score)."),
    "eval/response_length": ("evaluation steps", "mean greedy response length on the held-out set (tokens)."),
    "eval/truncated_frac": ("evaluation steps", "fraction of greedy held-out responses cut at the evaluation budget "
                                                "(`eval.max_new_tokens`, else `sampling.max_new_tokens`) without a "
                                                "stop token; such answers usually score 0."),
    "eval/problems": ("evaluation steps", "number of held-out problems evaluated."),
    "eval/sampled_accuracy": ("evaluation steps with `eval.samples > 0`",
                              "mean accuracy of the k sampled responses per problem (pass@1 at the sampling "
                              "temperature)."),
    "eval/pass@<k>": ("evaluation steps with `eval.samples = k > 0`",
                      "fraction of held-out problems solved by at least one of k sampled responses."),
}


def _pattern(key: str) -> re.Pattern:
    parts = re.split(r"(<[a-z]+>)", key)
    regex = "".join("[^/]+" if p.startswith("<") and p.endswith(">") else re.escape(p) for p in parts)
    return re.compile(f"^{regex}$")


def glossary_entry(key: str) -> str | None:
    """The glossary key (possibly a pattern such as ``reward/<name>/mean``) that covers `key`."""
    if key in METRICS:
        return key
    for pattern in METRICS:
        if "<" in pattern and _pattern(pattern).match(key):
            return pattern
    return None


def render_metrics_glossary() -> str:
    """The Markdown metrics glossary (``docs/metrics.md``)."""
    groups = [
        ("Rewards and accuracy of the rollout", ("reward/", "accuracy", "response_length/", "truncated_frac")),
        ("Dynamic sampling (DAPO)", ("dynamic_sampling/",)),
        ("Advantages and rollout statistics", ("zero_variance_group_frac", "value_mean", "kl_in_reward_mean",
                                               "critic_value_mean",
                                               "advantage/", "sampler_logp", "old_entropy_mean")),
        ("The update", ("policy/", "skipped_updates", "updates", "consecutive_skipped_steps", "lr")),
        ("Prompts", ("data/",)),
        ("Timing", ("time/", "tokens_per_s")),
        ("Held-out evaluation", ("eval/",)),
        ("Record", ("step",)),
    ]
    out = [
        "# Metrics glossary",
        "",
        "<!-- Generated by scripts/gen_docs.py from scripts/reference_docs.py; do not edit by hand. -->",
        "",
        "Every RL step appends one JSON object to `RUN_DIR/metrics.jsonl` (read it with "
        "`sspo_jax.train.logging_io.read_metrics(run_dir)`), and the same scalars go to TensorBoard "
        "when `logging.tensorboard` is on. `<name>` stands for a reward name of `rewards.weights`, `<k>` "
        "for `eval.samples`. Non-finite values are written as strings (`\"nan\"`, `\"inf\"`). Keys under "
        "`policy/` are means over the step's `ppo_epochs x num_minibatches` updates (token-weighted "
        "over micro-batches); keys ending in `_min`/`_max` are extremes. The evaluation before training "
        "is logged as step 0 with the `eval/` keys only.",
        "",
    ]
    seen: set[str] = set()
    for title, prefixes in groups:
        keys = [k for k in METRICS if k not in seen and any(
            k == p or (p.endswith("/") and k.startswith(p)) or (not p.endswith("/") and k.startswith(p))
            for p in prefixes)]
        if not keys:
            continue
        seen.update(keys)
        out += [f"## {title}", "", "| key | logged | meaning |", "|---|---|---|"]
        out += [f"| `{k}` | {_cell(METRICS[k][0])} | {_cell(METRICS[k][1])} |" for k in keys]
        out.append("")
    rest = [k for k in METRICS if k not in seen]
    if rest:
        raise DocsError(f"metrics {rest} belong to no glossary group; add them to render_metrics_glossary")
    return "\n".join(out).rstrip() + "\n"
