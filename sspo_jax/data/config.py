"""`DataConfig`: the frozen, validated settings of the prompt pipeline (source, template,
tokenization, batching, shuffling). Embedded in the trainer's YAML config under ``data:``; every
field has a default; a wrong value raises `DataError` naming the field (``data.<field>``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, Optional

from sspo_jax.data.arithmetic import ArithmeticConfig
from sspo_jax.data.files import ANSWER_FORMATS
from sspo_jax.data.records import DataError

SourceKind = Literal["arithmetic", "jsonl", "parquet", "reasoning_gym"]
TemplateMode = Literal["auto", "chat", "plain"]
OverlongPrompt = Literal["truncate", "reject", "error"]

SOURCES = ("arithmetic", "jsonl", "parquet", "reasoning_gym")
TEMPLATE_MODES = ("auto", "chat", "plain")
OVERLONG_PROMPT = ("truncate", "reject", "error")

QWEN_MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Settings of the prompt pipeline.

    Attributes:
      source: ``arithmetic`` (built-in task), ``jsonl``, ``parquet`` or ``reasoning_gym``.
      path: the JSONL/Parquet file.
      prompt_field: name of the prompt field in files (``problem`` MATH style, ``question`` GSM8K).
      answer_field: name of the gold answer field.
      answer_format: ``raw``, ``gsm8k`` (text after ``####``) or ``boxed`` (last ``\\boxed{}``).
      meta_fields: further file fields copied into each record's metadata.
      size: number of generated problems (arithmetic, reasoning_gym).
      generator_seed: seed of the generated problems (arithmetic, reasoning_gym).
      arithmetic: difficulty knobs of the arithmetic task (`ArithmeticConfig`, or a mapping).
      reasoning_gym_task: reasoning-gym dataset name.
      reasoning_gym_options: keyword arguments of that task's config (a mapping).
      batch_size: prompts per batch (B); a batch has B * group_size rows.
      group_size: responses sampled per prompt (G); each prompt fills G consecutive rows. In a
        training config it defaults to (and must equal) ``algorithm.group_size``.
      shuffle: shuffle the order of records in every epoch.
      seed: shuffling seed; epoch e uses the permutation drawn from (seed, e).
      num_epochs: passes over the data; None = unlimited.
      drop_last: at the end of the last epoch, drop a batch with fewer than B prompts (counted
        as ``dropped``) instead of yielding a smaller batch (a new shape to compile).
      max_prompt_len: longest prompt in tokens, after the template.
      overlong_prompt: what to do with a longer prompt: ``truncate`` (keep its last
        max_prompt_len tokens: the instruction and the generation prompt are at the end),
        ``reject`` (skip it and take the next record) or ``error``; truncations and rejections
        are counted.
      bucket_lengths: padded prompt lengths to choose from (the smallest that fits the longest
        prompt of a batch, to bound recompiles); empty = powers of two from 16, and max_prompt_len.
      template: ``auto`` (the tokenizer's chat template if it has one, else plain), ``chat`` or
        ``plain``.
      prompt_template: the text of the prompt (plain) or of the user message (chat), with
        ``{prompt}`` and ``{instruction}`` replaced (other braces are kept literally).
      instruction: the text put in place of ``{instruction}`` (Qwen-Math style by default).
      system_prompt: system message for chat templates; None = no system message.
      add_special_tokens: let the tokenizer add its special tokens (e.g. BOS) when encoding;
        chat templates already contain theirs.
      pad_token_id: id used for left padding; None = the tokenizer's pad token (else its EOS).
    """

    source: SourceKind = "arithmetic"
    path: str = ""
    prompt_field: str = "problem"
    answer_field: str = "answer"
    answer_format: str = "raw"
    meta_fields: tuple[str, ...] = ()
    size: int = 10_000
    generator_seed: int = 0
    arithmetic: ArithmeticConfig = ArithmeticConfig()
    reasoning_gym_task: str = "basic_arithmetic"
    reasoning_gym_options: tuple[tuple[str, Any], ...] = ()
    batch_size: int = 8
    group_size: int = 4
    shuffle: bool = True
    seed: int = 0
    num_epochs: Optional[int] = None
    drop_last: bool = True
    max_prompt_len: int = 256
    overlong_prompt: OverlongPrompt = "truncate"
    bucket_lengths: tuple[int, ...] = ()
    template: TemplateMode = "auto"
    prompt_template: str = "{prompt}\n{instruction}"
    instruction: str = QWEN_MATH_INSTRUCTION
    system_prompt: Optional[str] = None
    add_special_tokens: bool = False
    pad_token_id: Optional[int] = None

    def __post_init__(self) -> None:
        def ok(cond: bool, message: str) -> None:
            if not cond:
                raise DataError(message)

        if isinstance(self.arithmetic, Mapping):
            object.__setattr__(self, "arithmetic", ArithmeticConfig(**self.arithmetic))
        if isinstance(self.reasoning_gym_options, Mapping):
            object.__setattr__(self, "reasoning_gym_options", tuple(self.reasoning_gym_options.items()))
        object.__setattr__(self, "meta_fields", tuple(self.meta_fields))
        object.__setattr__(self, "bucket_lengths", tuple(self.bucket_lengths))
        ok(self.source in SOURCES, f"data.source={self.source!r} is not one of {list(SOURCES)}")
        ok(self.source not in ("jsonl", "parquet") or bool(self.path),
           f"data.path is empty but data.source={self.source!r} reads a file: set data.path")
        ok(self.answer_format in ANSWER_FORMATS,
           f"data.answer_format={self.answer_format!r} is not one of {list(ANSWER_FORMATS)}")
        ok(isinstance(self.arithmetic, ArithmeticConfig), "data.arithmetic must be a mapping of task knobs")
        for name in ("size", "batch_size", "group_size", "max_prompt_len"):
            value = getattr(self, name)
            ok(_int(value) and value >= 1, f"data.{name} must be an integer >= 1, got {value!r}")
        for name in ("seed", "generator_seed"):
            value = getattr(self, name)
            ok(_int(value) and value >= 0, f"data.{name} must be an integer >= 0, got {value!r}")
        ok(self.num_epochs is None or (_int(self.num_epochs) and self.num_epochs >= 1),
           f"data.num_epochs must be null (unlimited) or an integer >= 1, got {self.num_epochs!r}")
        for name in ("shuffle", "drop_last", "add_special_tokens"):
            ok(isinstance(getattr(self, name), bool), f"data.{name} must be true or false")
        ok(self.overlong_prompt in OVERLONG_PROMPT,
           f"data.overlong_prompt={self.overlong_prompt!r} is not one of {list(OVERLONG_PROMPT)}")
        ok(self.template in TEMPLATE_MODES, f"data.template={self.template!r} is not one of {list(TEMPLATE_MODES)}")
        ok(isinstance(self.prompt_template, str) and "{prompt}" in self.prompt_template,
           f"data.prompt_template must contain '{{prompt}}', got {self.prompt_template!r}")
        ok(all(_int(b) and 1 <= b <= self.max_prompt_len for b in self.bucket_lengths)
           and list(self.bucket_lengths) == sorted(set(self.bucket_lengths)),
           f"data.bucket_lengths must be increasing integers in [1, max_prompt_len={self.max_prompt_len}], "
           f"got {self.bucket_lengths!r}")
        ok(self.pad_token_id is None or (_int(self.pad_token_id) and self.pad_token_id >= 0),
           f"data.pad_token_id must be null or a token id >= 0, got {self.pad_token_id!r}")

    @property
    def buckets(self) -> tuple[int, ...]:
        """Padded prompt lengths, increasing, the last one `max_prompt_len`."""
        if self.bucket_lengths:
            base = list(self.bucket_lengths)
        else:
            base, b = [], 16
            while b < self.max_prompt_len:
                base.append(b)
                b *= 2
        if not base or base[-1] != self.max_prompt_len:
            base.append(self.max_prompt_len)
        return tuple(base)

    def replace(self, **changes: object) -> "DataConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
