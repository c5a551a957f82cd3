"""A table of bad inputs to ``sspo-jax train``: each exits with code 2 and one ``error:`` line that
names the problem and what to do, never a traceback (docs/reliability.md lists them all).

Each case builds its bad input under tmp_path and returns the ``train`` arguments; the fast tiny
config of tests/train is the base, so that a case which gets past validation would train.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Callable

import pytest
from safetensors.numpy import load_file, save_file

from tests.reliability.conftest import copy_model, edit_json, model_with, run_cli, train_argv


@dataclasses.dataclass
class Ctx:
    tmp: Path
    model_dir: Path
    config: Path
    finished_run: Path

    def argv(self, *sets: str, model: Path | None = None, config: Path | None = None, run: Path | None = None):
        return train_argv(model or self.model_dir, run or self.tmp / "run", config or self.config, *sets)

    def yaml(self, text: str | bytes) -> Path:
        path = self.tmp / "bad.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    def model(self, edit: Callable[[Path], None]) -> Path:
        path = copy_model(self.model_dir, self.tmp / "model")
        edit(path)
        return path

    def data(self, content: str | bytes, *sets: str) -> list[str]:
        path = self.tmp / "data.jsonl"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return self.argv("data.source=jsonl", f"data.path={path}", *sets)


ROW = '{"problem": "What is 1 + 1?", "answer": "2"}\n'


def _shorter(tensors: dict) -> None:
    tensors["model.norm.weight"] = tensors["model.norm.weight"][:-1]


def _extra(tensors: dict) -> None:
    tensors["model.extra.weight"] = tensors["model.norm.weight"]


def _cut(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def _tensors(path: Path, change: Callable[[dict], None]) -> None:
    file = path / "model.safetensors"
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


# (id, build argv from Ctx, fragments the error must contain)
CASES: list[tuple[str, Callable[[Ctx], list[str]], tuple[str, ...]]] = [
    # -- YAML and config structure
    ("yaml_syntax_error", lambda c: c.argv(config=c.yaml("train:\n  steps: [1, 2\nrun_dir: x\n")),
     ("bad.yaml: YAML syntax error at line", "column")),
    ("yaml_top_level_not_a_mapping", lambda c: c.argv(config=c.yaml("- train\n- steps\n")),
     ("the top level must be a mapping of sections, got list",)),
    ("yaml_not_utf8", lambda c: c.argv(config=c.yaml(b"train:\n  steps: \xff\xfe\n")), ("not UTF-8 text",)),
    ("config_file_missing", lambda c: c.argv(config=c.tmp / "nope.yaml"), ("nope.yaml' does not exist",)),
    ("required_value_left_unset", lambda c: c.argv(config=c.yaml("data:\n  path: ???\n")),
     ("data.path is required", "--set data.path=")),
    ("unknown_section", lambda c: c.argv("optimizer.lr=1e-5"),
     ("unknown config section(s) ['optimizer']", "known sections")),
    ("unknown_key", lambda c: c.argv("optim.learning_rate=1e-5"),
     ("unknown config key(s) ['optim.learning_rate']", "known keys of optim", "'lr'")),
    ("unknown_algorithm_key", lambda c: c.argv("algorithm.eps_lo=0.1"),
     ("unknown config key(s) ['algorithm.eps_lo']", "'eps_low'")),
    ("unknown_preset", lambda c: c.argv("algorithm.preset=ppo2"), ("unknown algorithm preset 'ppo2'", "'sspo'")),
    ("override_without_equals", lambda c: c.argv("train.steps"), ("'train.steps' must look like key.sub=value",)),
    ("override_into_a_value", lambda c: c.argv("train.steps.max=3"), ("train.steps is not a section",)),
    # -- wrong types
    ("wrong_type_integer", lambda c: c.argv("train.steps=three"), ("train.steps must be an integer, got str 'three'",)),
    ("wrong_type_bool", lambda c: c.argv("logging.tensorboard=maybe"), ("logging.tensorboard must be true or false",)),
    ("wrong_type_number", lambda c: c.argv("optim.lr=fast"), ("optim.lr must be a number, got str 'fast'",)),
    ("wrong_type_list", lambda c: c.argv("sampling.prompt_buckets=wide"), ("sampling.prompt_buckets",)),
    ("not_one_of_the_choices", lambda c: c.argv("optim.schedule=exponential"),
     ("optim.schedule='exponential' is not one of", "'cosine'")),
    # -- out-of-range values
    ("negative_learning_rate", lambda c: c.argv("optim.lr=-1e-5"), ("optim.lr=-1e-05 must be > 0",)),
    ("eps_low_at_least_1", lambda c: c.argv("algorithm.eps_low=1.0"),
     ("eps_low=1.0 must be in [0, 1)", "1 - eps_low must stay positive")),
    ("group_size_0", lambda c: c.argv("algorithm.group_size=0"), ("group_size=0 must be an integer >= 1",)),
    ("group_sizes_disagree", lambda c: c.argv("data.group_size=4"),
     ("data.group_size=4 differs from algorithm.group_size=8",)),
    ("steps_0", lambda c: c.argv("train.steps=0"), ("train.steps=0 must be >= 1",)),
    ("batch_size_0", lambda c: c.argv("data.batch_size=0"), ("data.batch_size must be an integer >= 1, got 0",)),
    ("minibatches_do_not_divide_rows", lambda c: c.argv("algorithm.num_minibatches=3"),
     ("algorithm.num_minibatches=3 must divide the rollout rows", "= 16")),
    ("micro_batch_does_not_divide_minibatch", lambda c: c.argv("train.micro_batch_size=3"),
     ("train.micro_batch_size=3 must divide the minibatch of 16 rows",)),
    ("checkpoint_every_0", lambda c: c.argv("checkpoint.every=0"), ("checkpoint.every=0 must be >= 1",)),
    ("reward_timeout_negative", lambda c: c.argv("rewards.timeout_s=-1"),
     ("rewards.timeout_s must be a positive number of seconds, got -1",)),
    ("top_p_sampling_for_training", lambda c: c.argv("sampling.top_p=0.9"),
     ("set sampling.top_k=0, sampling.top_p=1",)),
    ("mesh_does_not_fit_the_devices", lambda c: c.argv("mesh.data=3", "mesh.fsdp=1", "mesh.tensor=1"),
     ("mesh: data * fsdp * tensor = 3 * 1 * 1 = 3",)),
    # -- rewards
    ("unknown_reward_function", lambda c: c.argv("rewards.weights.nope=1.0"),
     ("rewards.weights names an unknown reward 'nope'", "known rewards", "register_reward")),
    ("eval_reward_not_a_correctness_reward", lambda c: c.argv("eval.reward=nope"),
     ("eval.reward='nope' must be a correctness reward",)),
    # -- model directory
    ("model_directory_missing", lambda c: c.argv(model=c.tmp / "no-model"), ("no-model' does not exist",)),
    ("builtin_model_unknown", lambda c: c.argv("model.path=builtin:nope"), ("no built-in model 'nope'",)),
    ("config_json_unsupported_model_type",
     lambda c: c.argv(model=c.model(lambda p: edit_json(p / "config.json", model_type="mistral"))),
     ("mistral", "supports qwen2, qwen3, llama")),
    ("config_json_malformed",
     lambda c: c.argv(model=c.model(lambda p: (p / "config.json").write_text('{"model_type": "qwen2",'))),
     ("cannot read", "config.json")),
    ("config_json_missing_key",
     lambda c: c.argv(model=c.model(lambda p: edit_json(p / "config.json", hidden_size=None))),
     ("hidden_size",)),
    ("safetensors_missing_tensor",
     lambda c: c.argv(model=c.model(lambda p: _tensors(p, lambda t: t.pop("model.norm.weight")))),
     ("is missing 1 tensor(s): model.norm.weight",)),
    ("safetensors_misshaped_tensor",
     lambda c: c.argv(model=c.model(lambda p: _tensors(p, _shorter))),
     ("shape mismatch for tensor 'model.norm.weight': expected (32,), got (31,)",)),
    ("safetensors_unexpected_tensor",
     lambda c: c.argv(model=c.model(lambda p: _tensors(p, _extra))),
     ("unexpected tensor(s) for this config: model.extra.weight",)),
    ("safetensors_file_missing",
     lambda c: c.argv(model=c.model(lambda p: (p / "model.safetensors").unlink())),
     ("no model.safetensors or model.safetensors.index.json", "safe_serialization=True")),
    ("safetensors_file_truncated",
     lambda c: c.argv(model=c.model(lambda p: _cut(p / "model.safetensors", 1000))),
     ("cannot read safetensors file", "model.safetensors")),
    ("tokenizer_does_not_fit_the_vocabulary",
     lambda c: c.argv(model=model_with(c.tmp / "small-vocab", c.model_dir, vocab_size=100)),
     ("the tokenizer has", "ids but the model's vocab_size is 100", "does not belong to this model")),
    ("tokenizer_directory_missing", lambda c: c.argv(f"model.tokenizer_path={c.tmp / 'no-tok'}"),
     ("tokenizer directory", "no-tok' does not exist")),
    # -- data files
    ("dataset_file_missing", lambda c: c.argv("data.source=jsonl", f"data.path={c.tmp / 'none.jsonl'}"),
     ("none.jsonl: no such file; check data.path",)),
    ("dataset_path_unset", lambda c: c.argv("data.source=jsonl"),
     ("data.path is empty but data.source='jsonl' reads a file",)),
    ("dataset_file_empty", lambda c: c.data("\n\n"), ("data.jsonl: the file has no records",)),
    ("dataset_malformed_json_line", lambda c: c.data(ROW + '{"problem": "2 + 2", "answer": \n'),
     ("data.jsonl:2: malformed JSON (Expecting value at column 32)",)),
    ("dataset_row_not_an_object", lambda c: c.data(ROW + ROW + '["2 + 2", "4"]\n'),
     ("data.jsonl:3: expected a JSON object per row, got list",)),
    ("dataset_missing_field", lambda c: c.data(ROW + ROW + '{"question": "2 + 2", "answer": "4"}\n'),
     ("data.jsonl:3: no prompt field 'problem'", "set data.prompt_field")),
    ("dataset_empty_answer", lambda c: c.data(ROW + '{"problem": "2 + 2", "answer": " "}\n'),
     ("data.jsonl:2: empty answer",)),
    ("dataset_not_utf8", lambda c: c.data(ROW.encode() + b'{"problem": "caf\xe9", "answer": "1"}\n'),
     ("data.jsonl:2: not valid UTF-8", "re-encode the file as UTF-8")),
    ("dataset_gsm8k_answer_without_marker", lambda c: c.data(ROW, "data.answer_format=gsm8k"),
     ("data.jsonl:1: answer field 'answer' has no '####' marker",)),
    ("prompt_longer_than_the_limit",
     lambda c: c.data(ROW * 4, "data.max_prompt_len=4", "data.overlong_prompt=error"),
     ("data.jsonl:", "tokens > data.max_prompt_len=4", "raise max_prompt_len")),
    ("every_prompt_longer_than_the_limit",
     lambda c: c.data(ROW * 4, "data.max_prompt_len=4", "data.overlong_prompt=reject"),
     ("every prompt is longer than data.max_prompt_len=4",)),
    # -- run directory
    ("run_directory_holds_a_different_model",
     lambda c: c.argv(model=model_with(c.tmp / "other", c.model_dir, num_hidden_layers=1), run=c.finished_run),
     ("holds checkpoints of a different model", "num_hidden_layers", "use a new --run-dir")),
    ("run_directory_holds_other_data", lambda c: c.argv("data.size=32", run=c.finished_run),
     ("was trained with a different config", "data.size: 64 -> 32", "--allow-config-change")),
    # -- resuming with another config (issue 21): refused before any array is read, never "corrupt"
    ("resume_with_another_algorithm", lambda c: c.argv("algorithm.preset=grpo", run=c.finished_run),
     ("was trained with a different config (checkpoint of step 3)", 'algorithm.preset: "sspo" -> "grpo"')),
    ("resume_with_a_new_state_part", lambda c: c.argv("algorithm.preset=ppo", "data.batch_size=4",
                                                      run=c.finished_run),
     ("was trained with a different config", "algorithm.critic: \"none\" -> \"token\"")),
    ("resume_in_bf16", lambda c: c.argv("model.dtype=bfloat16", run=c.finished_run),
     ('model.dtype: "float32" -> "bfloat16"',)),
    ("resume_with_another_lr_and_seed", lambda c: c.argv("optim.lr=2e-3", "train.seed=1", run=c.finished_run),
     ("optim.lr: 0.001 -> 0.002", "train.seed: 0 -> 1")),
    ("resume_with_another_max_new_tokens", lambda c: c.argv("sampling.max_new_tokens=16", run=c.finished_run),
     ("sampling.max_new_tokens: 8 -> 16",)),
    ("allow_config_change_names_no_key",
     lambda c: c.argv(run=c.finished_run) + ["--allow-config-change", "optim.lrr"],
     ("--allow-config-change 'optim.lrr' is not a config key or section",)),
    # -- more bad values and files (issue 21)
    ("learning_rate_infinite", lambda c: c.argv("optim.lr=inf"), ("optim.lr=inf must be a finite number",)),
    ("yaml_duplicate_top_level_key", lambda c: c.argv(config=c.yaml("train:\n  steps: 2\ntrain:\n  seed: 1\n")),
     ("bad.yaml: line 3: key 'train' appears twice", "merge the two blocks")),
    ("config_file_empty", lambda c: c.argv(config=c.yaml("")), ("the config file is empty",)),
    ("run_dir_flag_empty", lambda c: c.argv()[:-2] + ["--run-dir", ""], ("--run-dir is empty",)),
    ("rows_do_not_split_over_the_mesh",
     lambda c: c.argv("algorithm.preset=ppo", "data.batch_size=3", "mesh.data=8", "mesh.fsdp=1", "mesh.tensor=1"),
     ("the batch of 3 rows does not split over data x fsdp = 8 devices",)),
    ("sppo_with_a_format_weight", lambda c: c.argv("algorithm.preset=sppo", "rewards.weights.format=0.1"),
     ("algorithm.critic='prompt' (sppo)", "needs rewards in [0, 1]", "sum to")),
    ("sppo_with_negative_weights",
     lambda c: c.argv("algorithm.preset=sppo", "rewards.weights.math=-1.0", "rewards.weights.test_digit_share=0.5"),
     ("negative weights", "needs rewards in [0, 1]")),
    ("sppo_with_the_overlong_penalty",
     lambda c: c.argv("algorithm.preset=sppo", "rewards.weights.test_digit_share=0.5", "rewards.weights.math=0.5",
                      "algorithm.overlong_buffer_frac=0.25"),
     ("algorithm.overlong_buffer_frac adds a negative length penalty",)),
    ("gold_answers_that_do_not_parse",
     lambda c: c.data('{"problem": "What is 1 + 1?", "answer": "\\\\frac{{{"}\n' * 4),
     ("data.jsonl:", "reward 'math' cannot parse the gold answer '\\\\frac{{{' (16 of the batch's 16",
      "rewards.max_gold_unparsed_frac=0.5")),
    ("gold_answers_that_are_nan", lambda c: c.data('{"problem": "What is 1 + 1?", "answer": NaN}\n' * 4),
     ("data.jsonl:", "cannot parse the gold answer 'nan'")),
    # -- other commands
    ("eval_samples_negative", lambda c: ["eval", "--model", str(c.finished_run), "--samples", "-2"],
     ("--samples=-2 must be >= 0",)),
    ("export_out_is_a_file", lambda c: ["export", "--checkpoint", str(c.finished_run), "--out",
                                        str((c.tmp / "f").write_text("x") and c.tmp / "f")],
     ("is a file, not a directory",)),
    ("export_into_a_non_empty_directory",
     lambda c: ["export", "--checkpoint", str(c.finished_run), "--out",
                str((c.tmp / "o").mkdir() or (c.tmp / "o" / "config.json").write_text("{}") and c.tmp / "o")],
     ("is not empty", "--force")),
    ("eval_run_without_checkpoints",
     lambda c: ["eval", "--model", str(shutil.rmtree(c.finished_run / "checkpoints") or c.finished_run)],
     ("holds no checkpoint",)),
    ("run_directory_is_a_file",
     lambda c: c.argv(run=(c.tmp / "f").write_text("x") and c.tmp / "f" / "run"),
     ("is not writable", "choose another --run-dir")),
]


@pytest.mark.parametrize("build, expected", [pytest.param(b, e, id=i) for i, b, e in CASES])
def test_bad_input_is_a_clear_error(build, expected, model_dir, finished_run, tmp_path, empty_config, capsys):
    run = tmp_path / "copied-run"
    shutil.copytree(finished_run[0], run)
    argv = build(Ctx(tmp_path, model_dir, empty_config, run))
    rc, err = run_cli(argv, capsys)
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in {err!r}"


def test_the_table_has_at_least_30_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)
