"""The peer benchmark's job on TRL 1.16: its `GRPOTrainer` on the tiny Qwen2, run in .peers/trl.

Run by bench_peers.py in TRL's own venv (never imports sspo_jax)::

    .peers/trl/bin/python benchmarks/peers/trl_grpo.py --spec SPEC.json --out RECORDS.json

The model is transformers' `Qwen2ForCausalLM` loaded in fp32 from the shipped checkpoint; the
dataset is the shared prompt file in order (``shuffle_dataset=False``). TRL's defaults are
overridden for an fp32 CPU comparison with sspo_jax's job (`grpo_config`): no bf16, no
gradient checkpointing, no vLLM, the job's learning rate, warmup, clipping, KL beta and clip
bounds, ``loss_type="grpo"`` (seq-mean-token-mean; ``"dapo"``, a token mean over the batch, for
the GSPO variant), and one generation batch = one optimizer step = 32 prompts x 8 rows in a
single micro-batch.

Phases (wall clock; torch runs eagerly, so each call's time is its work):
  * ``extra_forward_s``: `GRPOTrainer._get_per_token_logps_and_entropies` calls made without
    gradients (the reference model's forward for the KL term; an old-policy forward only runs
    when generation and optimisation steps are misaligned, not here);
  * ``generate_and_reward_s``: `GRPOTrainer._generate_and_score_completions` (tokenising,
    ``generate()``, decoding, the reward, advantages) minus those extra forwards;
  * ``step_s``: from the HF Trainer's ``on_step_begin`` to ``on_step_end`` callbacks (one
    optimizer step: generation, loss, backward, clipping, AdamW, the scheduler);
  * ``update_s``: ``step_s`` minus the two above (loss forward, backward, clipping, optimizer step).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from answer_check import score  # noqa: E402
from job_io import job_args, PhaseClock, check_prompt_order, read_prompts, write_result  # noqa: E402


def grpo_config(spec: dict, output_dir: str):
    """TRL's `GRPOConfig` for the job (every default that differs from the job overridden)."""
    from trl import GRPOConfig

    gspo = spec["peer_variant"] == "gspo"
    rows = spec["batch_size"] * spec["group_size"]
    return GRPOConfig(
        output_dir=output_dir, max_steps=spec["steps"], seed=spec["seed"], use_cpu=True,
        bf16=False, fp16=False, gradient_checkpointing=False, use_vllm=False,
        per_device_train_batch_size=rows, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=spec["group_size"], num_iterations=1, shuffle_dataset=False,
        max_completion_length=spec["max_new_tokens"], temperature=spec["temperature"], top_p=1.0, top_k=0,
        learning_rate=spec["lr"], lr_scheduler_type="constant_with_warmup",
        warmup_steps=min(spec["warmup_steps"], max(spec["steps"] - 1, 0)), max_grad_norm=spec["max_grad_norm"],
        adam_beta1=spec["b1"], adam_beta2=spec["b2"], adam_epsilon=spec["adam_eps"],
        weight_decay=spec["weight_decay"], optim="adamw_torch",
        beta=spec["kl_beta"], epsilon=spec["eps_low"], epsilon_high=spec["eps_high"],
        loss_type="dapo" if spec["loss_agg_mode"] == "token-mean" else "grpo",
        importance_sampling_level="sequence" if gspo else "token", scale_rewards="group",
        mask_truncated_completions=False, disable_dropout=True,
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0, remove_unused_columns=False)


def main(argv: list[str] | None = None) -> dict:
    spec, out = job_args(__doc__, argv)
    t_build = time.perf_counter()

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    model_dir = spec["model_dir"]
    rows = read_prompts(spec["prompts"])
    if len(rows) < spec["steps"] * spec["batch_size"]:
        raise SystemExit(f"error: the prompt file has fewer than {spec['steps']} steps of {spec['batch_size']} prompts")
    dataset = Dataset.from_list([{"prompt": r["prompt"], "gold": r["gold"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    clock, seen = PhaseClock(), []

    def math_reward(prompts, completions, gold, completion_ids=None, **kwargs):
        seen.append(list(prompts[::spec["group_size"]]))
        rewards = [score(c, str(a)) for c, a in zip(completions, gold)]
        clock.add_rewards(rewards, [len(ids) for ids in completion_ids] if completion_ids is not None else None)
        return rewards

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            total = time.perf_counter() - self.t0
            ph = clock._phases
            gen, extra = ph.get("generate_and_score", 0.0), ph.get("no_grad_logps", 0.0)
            clock.end_step(state.global_step, total, gen - extra, extra, total - gen)

    with tempfile.TemporaryDirectory(prefix="bench_peers_trl_") as out_dir:
        trainer = GRPOTrainer(model=model, reward_funcs=[math_reward], args=grpo_config(spec, out_dir),
                              train_dataset=dataset, processing_class=tokenizer, callbacks=[StepTimer()])
        logps = trainer._get_per_token_logps_and_entropies

        def timed_logps(*a, **k):
            if torch.is_grad_enabled():
                return logps(*a, **k)
            t0 = time.perf_counter()
            try:
                return logps(*a, **k)
            finally:
                clock.add("no_grad_logps", time.perf_counter() - t0)

        trainer._get_per_token_logps_and_entropies = timed_logps
        trainer._generate_and_score_completions = clock.timed("generate_and_score",
                                                              trainer._generate_and_score_completions)
        trainer._calculate_rewards = clock.timed("reward", trainer._calculate_rewards)
        build_s = time.perf_counter() - t_build
        trainer.train()
    check_prompt_order(rows, seen)
    from importlib import metadata

    return write_result(out, "trl", spec["preset"], clock.records, build_s=build_s,
                        prompts_match_shared_file=True, rows_per_step=spec["batch_size"] * spec["group_size"],
                        torch_threads=torch.get_num_threads(),
                        versions={p: metadata.version(p) for p in ("trl", "transformers", "torch", "accelerate")})


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
