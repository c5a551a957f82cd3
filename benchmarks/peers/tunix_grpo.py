"""The peer benchmark's job on Tunix 0.1.7: its `GRPOLearner` on the tiny Qwen2, run in .peers/tunix.

Run by bench_peers.py in Tunix's own venv (never imports sspo_jax)::

    .peers/tunix/bin/python benchmarks/peers/tunix_grpo.py --spec SPEC.json --out RECORDS.json

The model: Tunix's Qwen2 has only named presets, so the `ModelConfig` is built from the
checkpoint's config.json here and its safetensors are read by Tunix's own loader
(`tunix.models.qwen2.params.create_model_from_safe_tensors`) into the policy; the reference
model is a separate copy of the same weights (as Tunix's GRPO CLI does). Sampling: Tunix's
vanilla rollout (its `Sampler`, KV cache of prompt length + new tokens) at the spec's temperature
and top_p=1; its `RolloutConfig.seed` is one fixed key, so each rollout call is given a fresh
``fold_in(seed, call)`` key here (otherwise every step samples with the same key).

Phases (wall clock, each JAX result blocked on before the clock stops):
  * ``generate_and_reward_s``: `GRPOLearner._generate_and_compute_advantage` (sampling, decoding,
    the reward, advantages) minus the extra forwards inside it;
  * ``extra_forward_s``: `RLCluster.get_ref_per_token_logps` (the KL reference; an old-policy
    forward, `get_old_per_token_logps`, only runs with num_iterations > 1);
  * ``update_s``: `RLCluster.update_actor` (loss, gradient, clipping and the optimizer step);
  * ``step_s``: one `RLLearner._run_global_step` (one prompt batch, one optimizer update).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from answer_check import score  # noqa: E402
from job_io import job_args, PhaseClock, check_prompt_order, read_prompts, write_result  # noqa: E402


def model_config(model_dir: Path):
    """Tunix's Qwen2 `ModelConfig` from a Hugging Face config.json (fp32)."""
    import jax.numpy as jnp
    from tunix.models.qwen2 import model as qwen2

    hf = json.loads((model_dir / "config.json").read_text())
    rope = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return qwen2.ModelConfig(
        num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"], num_heads=hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        num_kv_heads=hf["num_key_value_heads"], rope_theta=int(rope), norm_eps=hf["rms_norm_eps"],
        use_tied_embedding=bool(hf.get("tie_word_embeddings", False)), dtype=jnp.float32, param_dtype=jnp.float32)


def optimizer(spec: dict):
    """sspo_jax's optimizer written out in optax: global-norm clipping, then AdamW with a linear
    warmup from 0 over ``min(warmup_steps, steps - 1)`` updates, then constant."""
    import optax

    warmup = min(spec["warmup_steps"], max(spec["steps"] - 1, 0))
    lr = spec["lr"]
    schedule = optax.constant_schedule(lr) if warmup == 0 else optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
    return optax.chain(optax.clip_by_global_norm(spec["max_grad_norm"]),
                       optax.adamw(schedule, b1=spec["b1"], b2=spec["b2"], eps=spec["adam_eps"],
                                   weight_decay=spec["weight_decay"]))


def main(argv: list[str] | None = None) -> dict:
    spec, out = job_args(__doc__, argv)
    t_build = time.perf_counter()

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from transformers import AutoTokenizer
    from tunix.models.qwen2 import params as qwen2_params
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout

    model_dir = Path(spec["model_dir"])
    prompts = read_prompts(spec["prompts"])
    b, g, steps = spec["batch_size"], spec["group_size"], spec["steps"]
    # one array per field: Tunix tree-maps np.repeat over a batch, so a list would split into its strings
    batches = [{"prompts": np.array([r["prompt"] for r in prompts if r["step"] == s], dtype=object),
                "gold": np.array([r["gold"] for r in prompts if r["step"] == s], dtype=object)}
               for s in range(1, steps + 1)]
    if any(len(x["prompts"]) != b for x in batches):
        raise SystemExit(f"error: the prompt file has fewer than {steps} steps of {b} prompts")

    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), devices=jax.devices()[:1],
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)  # as tunix.utils.mesh does
    cfg = model_config(model_dir)
    reference = qwen2_params.create_model_from_safe_tensors(str(model_dir), cfg, mesh)
    graph, state = nnx.split(reference)
    actor = nnx.merge(graph, jax.tree.map(jnp.copy, state))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)

    longest = max(len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) for r in prompts)
    prompt_len = max(spec["max_prompt_len"], longest)
    rollout_config = base_rollout.RolloutConfig(
        max_tokens_to_generate=spec["max_new_tokens"], max_prompt_length=prompt_len,
        kv_cache_size=prompt_len + spec["max_new_tokens"] + 8, temperature=spec["temperature"], top_p=1.0,
        top_k=None, eos_tokens=[tokenizer.eos_token_id], seed=jax.random.PRNGKey(spec["seed"]))
    training_config = rl_cluster_lib.RLTrainingConfig(
        actor_optimizer=optimizer(spec), eval_every_n_steps=10 ** 9, max_steps=steps,
        mini_batch_size=b, train_micro_batch_size=b, rollout_micro_batch_size=b, compute_logps_micro_batch_size=b,
        checkpoint_root_directory=None, pbar_description=None)
    cluster_config = rl_cluster_lib.ClusterConfig(
        role_to_mesh={role: mesh for role in (rl_cluster_lib.Role.ACTOR, rl_cluster_lib.Role.REFERENCE,
                                              rl_cluster_lib.Role.ROLLOUT)},
        rollout_engine="vanilla", offload_to_cpu=False, training_config=training_config,
        rollout_config=rollout_config)
    cluster = rl_cluster_lib.RLCluster(actor=actor, reference=reference if spec["kl_beta"] else None,
                                       tokenizer=tokenizer, cluster_config=cluster_config)
    gspo = spec["peer_variant"] == "gspo"
    algo = grpo_learner.GRPOConfig(
        num_generations=g, num_iterations=1, beta=spec["kl_beta"], epsilon=spec["eps_low"],
        kl_loss_mode="low_var_kl",  # k3
        loss_agg_mode="token-mean" if spec["loss_agg_mode"] == "token-mean" else "sequence-mean-token-mean",
        loss_algo="gspo-token" if gspo else "grpo")
    if spec["eps_high"] != spec["eps_low"]:
        algo.epsilon_high = spec["eps_high"]  # not a GRPOConfig field; the loss reads it when present
    clock, seen = PhaseClock(), []

    def reward_fn(prompts, completions, gold, **kwargs):
        seen.append([str(p) for p in prompts[::g]])
        rewards = [score(c, str(a)) for c, a in zip(completions, gold)]
        clock.add_rewards(rewards)
        return rewards

    learner = grpo_learner.GRPOLearner(rl_cluster=cluster, algo_config=algo, reward_fns=[reward_fn])

    # -- fresh sampling keys and the phase clocks ------------------------------------------------
    rollout = cluster.rollout
    base_key, calls = jax.random.PRNGKey(spec["seed"]), [0]
    plain_generate = rollout.generate

    def seeded_generate(prompts, config, **kwargs):
        calls[0] += 1
        out = plain_generate(prompts, dataclasses.replace(config, seed=jax.random.fold_in(base_key, calls[0])),
                             **kwargs)
        clock.add_rewards([], [len(t) for t in out.tokens])
        return out

    rollout.generate = seeded_generate

    def blocking(phase, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = jax.block_until_ready(fn(*a, **k))
            clock.add(phase, time.perf_counter() - t0)
            return out
        return wrapper

    cluster.get_ref_per_token_logps = blocking("ref_forward", cluster.get_ref_per_token_logps)
    cluster.get_old_per_token_logps = blocking("old_forward", cluster.get_old_per_token_logps)
    learner._generate_and_compute_advantage = blocking("generate_and_advantage",
                                                       learner._generate_and_compute_advantage)
    plain_update = cluster.update_actor

    def timed_update(*a, **k):
        t0 = time.perf_counter()
        plain_update(*a, **k)
        jax.block_until_ready(nnx.state(cluster.actor_trainer.model))
        clock.add("update", time.perf_counter() - t0)

    cluster.update_actor = timed_update
    plain_global_step = learner._run_global_step
    step_no = [0]

    def timed_global_step(*a, **k):
        t0 = time.perf_counter()
        plain_global_step(*a, **k)
        total = time.perf_counter() - t0
        step_no[0] += 1
        ph = clock._phases
        extra = ph.get("ref_forward", 0.0) + ph.get("old_forward", 0.0)
        clock.end_step(step_no[0], total, ph.get("generate_and_advantage", 0.0) - extra, extra, ph.get("update", 0.0))

    learner._run_global_step = timed_global_step
    build_s = time.perf_counter() - t_build
    learner.train(batches)
    check_prompt_order(prompts, seen)
    return write_result(out, "tunix", spec["preset"], clock.records, build_s=build_s,
                        prompts_match_shared_file=True, rows_per_step=b * g, prompt_len=prompt_len,
                        versions={"tunix": _version("google-tunix"), "jax": jax.__version__})


def _version(pkg: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
