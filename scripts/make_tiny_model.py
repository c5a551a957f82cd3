"""Build the tiny default model that ships in ``sspo_jax/assets/tiny-arith``.

The asset is what ``make run`` and the CPU tests train with RL, so it must be small, load
offline, and start *partly* right: it knows the answer format of the built-in arithmetic task
(``sspo_jax.data.arithmetic``) and gets some of the arithmetic wrong, which a correctness reward
can then fix. This script, deterministic given ``--seed``:

1. trains a byte-level BPE tokenizer on the task's text with the ``tokenizers`` library (digits
   split one per token as in Qwen, punctuation isolated so that ``,`` and ``.`` are tokens of
   their own, ``<|endoftext|>`` as EOS and ``<|pad|>`` as padding) and saves it in Hugging Face
   format (``transformers.AutoTokenizer`` loads it offline);
2. builds a tiny Qwen2-architecture `Qwen2ForCausalLM` (GQA, tied embeddings) and warm-starts it
   by supervised fine-tuning with Optax AdamW: prompts are formatted and tokenized exactly as the
   RL data pipeline formats them (`PromptEncoder` with the `DataConfig` below), the response is
   the task's worked ``solution`` followed by EOS, and the loss covers the response tokens only;
3. every ``--eval-every`` steps measures greedy accuracy on a held-out selection set (problems of
   another generator seed) with `sspo_jax.rollout.generate`, and stops at the first checkpoint
   whose accuracy lies in ``[--target-min, --target-max]`` so that RL has room to improve;
4. reports greedy accuracy, sampled (temperature 1) accuracy and pass@k on a third, separate set
   of problems, and writes the model (`save_pretrained`), the tokenizer files and ``meta.json``
   (every setting needed to reproduce it and to configure RL with the same prompts).

Run from the repository root::

    .venv/bin/python scripts/make_tiny_model.py            # writes sspo_jax/assets/tiny-arith
    .venv/bin/python scripts/make_tiny_model.py --help
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "sspo_jax", "assets", "tiny-arith")
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
MAX_ASSET_BYTES = 10 * 1024 * 1024
ASSET_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "meta.json")
_SEGMENT_END = re.compile(r"[,.](?=\s|$)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train the tiny BPE tokenizer and the SFT warm-started tiny Qwen2 model for the "
                    "built-in arithmetic task, and save them as a Hugging Face directory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seed", type=int, default=0,
                   help="master seed: model initialisation and the sampled evaluation")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="output directory; the files it holds from an earlier run are replaced")

    g = p.add_argument_group("task (sspo_jax.data.ArithmeticConfig)")
    g.add_argument("--min-steps", type=int, default=2, help="fewest operations per problem")
    g.add_argument("--max-steps", type=int, default=3, help="most operations per problem")
    g.add_argument("--min-operand", type=int, default=1, help="smallest operand")
    g.add_argument("--max-operand", type=int, default=20, help="largest operand")
    g.add_argument("--max-value", type=int, default=100, help="largest intermediate or final result")
    g.add_argument("--operators", default="+-*", help="operations to draw from, a subset of '+-*/'")
    g.add_argument("--style", default="symbolic", choices=("symbolic", "worded"),
                   help="ArithmeticConfig.style: equations, or a story with natural-language solutions "
                        "(the tiny-word asset: --style worded --out sspo_jax/assets/tiny-word)")
    g.add_argument("--train-problems-seed", type=int, default=10,
                   help="generator seed of the SFT training problems (each problem is used once)")
    g.add_argument("--select-problems-seed", type=int, default=11,
                   help="generator seed of the checkpoint selection set")
    g.add_argument("--eval-problems-seed", type=int, default=12,
                   help="generator seed of the reported held-out set (also used by the tests)")
    g.add_argument("--select-problems", type=int, default=400, help="size of the selection set")
    g.add_argument("--eval-problems", type=int, default=200, help="size of the reported held-out set")

    g = p.add_argument_group("prompt (sspo_jax.data.DataConfig, plain template)")
    g.add_argument("--prompt-template", default="{prompt}\n{instruction}\n",
                   help="DataConfig.prompt_template; the response follows it directly")
    g.add_argument("--instruction", default="Think step by step.", help="DataConfig.instruction")

    g = p.add_argument_group("tokenizer and model")
    g.add_argument("--vocab-size", type=int, default=300,
                   help="BPE vocabulary budget (256 byte symbols + specials + merges); training "
                        "stops earlier when the corpus has no pair left to merge")
    g.add_argument("--tokenizer-problems", type=int, default=2000,
                   help="training problems whose prompt and solution text train the tokenizer")
    g.add_argument("--hidden-size", type=int, default=96)
    g.add_argument("--layers", type=int, default=3)
    g.add_argument("--heads", type=int, default=4, help="query heads")
    g.add_argument("--kv-heads", type=int, default=2, help="key/value heads (grouped-query attention)")
    g.add_argument("--intermediate-size", type=int, default=256, help="SwiGLU width")
    g.add_argument("--max-positions", type=int, default=512, help="max_position_embeddings")

    g = p.add_argument_group("supervised fine-tuning")
    g.add_argument("--batch-size", type=int, default=32, help="sequences per SFT step")
    g.add_argument("--max-sft-steps", type=int, default=1500, help="step budget")
    g.add_argument("--lr", type=float, default=3e-3, help="AdamW peak learning rate")
    g.add_argument("--warmup-steps", type=int, default=50, help="linear warm-up, then constant")
    g.add_argument("--weight-decay", type=float, default=0.01, help="on matrices only")
    g.add_argument("--clip-norm", type=float, default=1.0, help="global gradient norm clip")
    g.add_argument("--eval-every", type=int, default=25, help="selection-set evaluation period")
    g.add_argument("--min-eval-step", type=int, default=100, help="first step that is evaluated")
    g.add_argument("--target-min", type=float, default=0.35,
                   help="stop at the first evaluation with greedy accuracy >= this ...")
    g.add_argument("--target-max", type=float, default=0.50,
                   help="... and <= this (else the closest checkpoint is kept)")

    g = p.add_argument_group("evaluation")
    g.add_argument("--max-new-tokens", type=int, default=64, help="response length budget")
    g.add_argument("--samples", type=int, default=8, help="k of pass@k (temperature 1 samples)")
    args = p.parse_args(argv)
    if args.min_eval_step > args.max_sft_steps:
        p.error("--min-eval-step must be <= --max-sft-steps (the last step is always evaluated)")
    if not 0.0 <= args.target_min <= args.target_max <= 1.0:
        p.error("need 0 <= --target-min <= --target-max <= 1")
    for name in ("batch_size", "max_sft_steps", "eval_every", "samples", "select_problems", "eval_problems"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def build_configs(args: argparse.Namespace):
    """The `ArithmeticConfig` and the `DataConfig` of the prompts (what RL must use too)."""
    from sspo_jax.data import ArithmeticConfig, DataConfig

    arith = ArithmeticConfig(min_steps=args.min_steps, max_steps=args.max_steps, min_operand=args.min_operand,
                             max_operand=args.max_operand, max_value=args.max_value, operators=args.operators,
                             style=args.style)
    data = DataConfig(source="arithmetic", arithmetic=arith, template="plain",
                      prompt_template=args.prompt_template, instruction=args.instruction,
                      add_special_tokens=False, shuffle=False, num_epochs=1, drop_last=False,
                      generator_seed=args.train_problems_seed)
    return arith, data


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int):
    """A byte-level BPE over `texts` wrapped as a `PreTrainedTokenizerFast` (EOS and pad set)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN, PAD_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                   padding_side="left", model_max_length=max_length)


def save_tokenizer(tokenizer, path: str) -> None:
    """Hugging Face tokenizer files; the class name is the portable `PreTrainedTokenizerFast`."""
    tokenizer.save_pretrained(path)
    config_file = os.path.join(path, "tokenizer_config.json")
    with open(config_file, encoding="utf-8") as fh:
        config = json.load(fh)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(config_file, "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)
    with open(os.path.join(path, "special_tokens_map.json"), "w", encoding="utf-8") as fh:
        json.dump({"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}, fh, indent=2, sort_keys=True)


def sft_arrays(records: list[dict[str, str]], encoder, tokenizer, eos_id: int, pad_id: int):
    """Right-padded rows ``prompt | solution EOS`` with attention and loss masks (int32 [N, T])."""
    rows, starts = [], []
    for rec in records:
        prompt = encoder.encode(encoder.format(rec["prompt"]))
        response = list(tokenizer(rec["solution"], add_special_tokens=False)["input_ids"]) + [eos_id]
        rows.append(prompt + response)
        starts.append(len(prompt))
    width = -(-max(len(r) for r in rows) // 8) * 8
    tokens = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    loss_mask = np.zeros((len(rows), width), np.float32)
    for i, (row, start) in enumerate(zip(rows, starts)):
        tokens[i, :len(row)] = row
        mask[i, :len(row)] = 1
        loss_mask[i, start:len(row)] = 1.0
    return tokens, mask, loss_mask


def count_segments(text: str) -> int:
    """Punctuation-separated steps: non-empty pieces between ``,`` / ``.`` followed by space or end."""
    return sum(1 for piece in _SEGMENT_END.split(text) if piece.strip())


class Evaluator:
    """Generates for one fixed set of arithmetic prompts (built by `PromptBatcher`, as in RL)."""

    def __init__(self, tokenizer, data_cfg, seed: int, size: int, max_new_tokens: int, eos_id: int, pad_id: int):
        from sspo_jax.data import PromptBatcher, build_source
        from sspo_jax.rollout import SamplingConfig

        cfg = data_cfg.replace(size=size, generator_seed=seed, batch_size=size, group_size=1)
        batch = next(PromptBatcher(build_source(cfg), tokenizer, cfg))
        self.tokenizer, self.prompt_ids, self.prompt_mask = tokenizer, batch.input_ids, batch.attention_mask
        self.golds = batch.golds
        self.sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, eos_token_ids=(eos_id,),
                                       pad_token_id=pad_id)

    def run(self, graphdef, params, rng, *, temperature: float = 0.0, group_size: int = 1) -> dict:
        """Responses, per-row exact-match scores and lengths (rows grouped per prompt)."""
        import jax

        from sspo_jax.rewards import exact_match_reward
        from sspo_jax.rollout import generate

        cfg = self.sampling.replace(temperature=temperature)
        out = jax.device_get(generate((graphdef, params), self.prompt_ids, self.prompt_mask, cfg, rng,
                                      group_size=group_size))
        p = out.prompt_len
        responses = [self.tokenizer.decode(row[p:][m[p:]].tolist(), skip_special_tokens=True)
                     for row, m in zip(out.tokens, out.response_mask)]
        golds = [g for g in self.golds for _ in range(group_size)]
        scores = exact_match_reward(responses, golds).scores
        return {"responses": responses, "golds": golds, "scores": np.asarray(scores),
                "lengths": np.asarray(out.response_lengths), "truncated": np.asarray(out.truncated)}


def summary(result: dict, group_size: int = 1) -> dict:
    """Accuracy (mean over all rows), pass@G when grouped, lengths and format statistics."""
    scores = result["scores"].reshape(-1, group_size)
    out = {
        "accuracy": round(float(scores.mean()), 4),
        "mean_response_tokens": round(float(result["lengths"].mean()), 2),
        "mean_segments": round(float(np.mean([count_segments(r) for r in result["responses"]])), 3),
        "boxed_fraction": round(float(np.mean(["\\boxed{" in r for r in result["responses"]])), 4),
        "truncated_fraction": round(float(result["truncated"].mean()), 4),
    }
    if group_size > 1:
        out[f"pass@{group_size}"] = round(float((scores.max(axis=1) > 0).mean()), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.time()
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from sspo_jax.data import PromptEncoder, fill_template, problems
    from sspo_jax.models import Qwen2Config, Qwen2ForCausalLM, from_pretrained, save_pretrained

    arith, data_cfg = build_configs(args)
    train = problems(args.max_sft_steps * args.batch_size, args.train_problems_seed, arith)

    # 1. Tokenizer, on the formatted prompts and solutions of the first training problems.
    corpus = [fill_template(data_cfg.prompt_template, r["prompt"], data_cfg.instruction) + r["solution"]
              for r in train[:args.tokenizer_problems]]
    tokenizer = train_tokenizer(corpus, args.vocab_size, args.max_positions)
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    encoder = PromptEncoder(tokenizer, data_cfg)
    if encoder.use_chat or encoder.pad_id != pad_id:
        raise RuntimeError("the prompt encoder does not use the plain template with the tokenizer's pad id")
    tokens, mask, loss_mask = sft_arrays(train, encoder, tokenizer, eos_id, pad_id)
    vocab = len(tokenizer)
    print(f"tokenizer: {vocab} tokens; SFT rows {tokens.shape}, response tokens (EOS included) mean "
          f"{loss_mask.sum(1).mean():.1f}, max {int(loss_mask.sum(1).max())} ({time.time() - start:.1f}s)",
          flush=True)

    # 2. Model and SFT.
    model_cfg = Qwen2Config(vocab_size=vocab, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                            num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                            intermediate_size=args.intermediate_size, rope_theta=10_000.0,
                            max_position_embeddings=args.max_positions, tie_word_embeddings=True,
                            bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    model = Qwen2ForCausalLM(model_cfg, rngs=nnx.Rngs(params=args.seed))
    graphdef, params = nnx.split(model, nnx.Param)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, args.lr, max(args.warmup_steps, 1)), optax.constant_schedule(args.lr)],
        [max(args.warmup_steps, 1)])
    tx = optax.chain(optax.clip_by_global_norm(args.clip_norm),
                     optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=args.weight_decay,
                                 mask=lambda tree: jax.tree.map(lambda x: x.ndim >= 2, tree)))
    opt_state = tx.init(params)

    def loss_fn(p, tok, att, lmask):
        m = nnx.merge(graphdef, p)
        logp, _ = m.token_logprobs_and_entropy(tok, att, compute_entropy=False)
        return -jnp.sum(logp * lmask) / jnp.maximum(jnp.sum(lmask), 1.0)

    @jax.jit
    def train_step(p, state, tok, att, lmask):
        loss, grads = jax.value_and_grad(loss_fn)(p, tok, att, lmask)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    selector = Evaluator(tokenizer, data_cfg, args.select_problems_seed, args.select_problems,
                         args.max_new_tokens, eos_id, pad_id)
    history, best, chosen = [], None, None
    print(f"model: {n_params:,} parameters; SFT up to {args.max_sft_steps} steps of {args.batch_size}", flush=True)
    losses = []
    for step in range(1, args.max_sft_steps + 1):
        sl = slice((step - 1) * args.batch_size, step * args.batch_size)
        params, opt_state, loss = train_step(params, opt_state, tokens[sl], mask[sl], loss_mask[sl])
        losses.append(loss)
        if step < args.min_eval_step or (step % args.eval_every and step != args.max_sft_steps):
            continue
        result = selector.run(graphdef, params, jax.random.key(0))
        stats = summary(result)
        mean_loss = float(np.mean(jax.device_get(losses[-args.eval_every:])))
        history.append({"step": step, "loss": round(mean_loss, 4), "accuracy": stats["accuracy"]})
        print(f"step {step:5d}  loss {mean_loss:.4f}  greedy acc {stats['accuracy']:.3f}  "
              f"segments {stats['mean_segments']:.2f}  boxed {stats['boxed_fraction']:.2f}  "
              f"({time.time() - start:.0f}s)", flush=True)
        acc = stats["accuracy"]
        if args.target_min <= acc <= args.target_max:
            chosen = (step, params, stats)
            break
        distance = max(args.target_min - acc, acc - args.target_max)
        if best is None or distance < best[0]:
            best = (distance, step, jax.device_get(params), stats)
    if chosen is None:
        print("warning: no checkpoint reached the target band; keeping the closest one", file=sys.stderr)
        _, step, host_params, stats = best
        chosen = (step, jax.tree.map(jnp.asarray, host_params), stats)
    sft_steps, params, select_stats = chosen
    sft_seconds = time.time() - start
    nnx.update(model, params)

    # 3. Save, reload from disk, and report on the separate held-out set.
    os.makedirs(args.out, exist_ok=True)
    for name in ASSET_FILES:
        if os.path.exists(os.path.join(args.out, name)):
            os.remove(os.path.join(args.out, name))
    save_pretrained(model, args.out)
    save_tokenizer(tokenizer, args.out)
    for name in os.listdir(args.out):  # safetensors writes its file owner-only; ship it world-readable
        os.chmod(os.path.join(args.out, name), 0o644)
    loaded = from_pretrained(args.out)
    graphdef, params = nnx.split(loaded, nnx.Param)
    held_out = Evaluator(tokenizer, data_cfg, args.eval_problems_seed, args.eval_problems,
                         args.max_new_tokens, eos_id, pad_id)
    greedy = summary(held_out.run(graphdef, params, jax.random.key(args.seed)))
    sampled_result = held_out.run(graphdef, params, jax.random.key(args.seed + 1), temperature=1.0,
                                  group_size=args.samples)
    sampled = summary(sampled_result, args.samples)

    data_fields = {k: getattr(data_cfg, k) for k in ("source", "template", "prompt_template", "instruction",
                                                     "add_special_tokens")}
    meta = {
        "description": f"Tiny Qwen2 warm-started by SFT on the built-in arithmetic task ({args.style}); "
                       "made by scripts/make_tiny_model.py",
        "command": shlex.join(["scripts/make_tiny_model.py", *(argv if argv is not None else sys.argv[1:])]),
        "seed": args.seed,
        "sft_steps": sft_steps,
        "data": {**data_fields, "arithmetic": dataclasses.asdict(arith)},
        "problem_seeds": {"train": args.train_problems_seed, "select": args.select_problems_seed,
                          "eval": args.eval_problems_seed},
        "tokenizer": {"vocab_size": vocab, "eos_token": EOS_TOKEN, "eos_token_id": eos_id,
                      "pad_token": PAD_TOKEN, "pad_token_id": pad_id, "bos_token": None},
        "model": {"parameters": int(n_params), "hidden_size": args.hidden_size, "layers": args.layers,
                  "heads": args.heads, "kv_heads": args.kv_heads, "intermediate_size": args.intermediate_size},
        "sft": {"batch_size": args.batch_size, "lr": args.lr, "warmup_steps": args.warmup_steps,
                "weight_decay": args.weight_decay, "clip_norm": args.clip_norm, "optimizer": "adamw(b1=0.9, b2=0.98)",
                "target_band": [args.target_min, args.target_max], "eval_every": args.eval_every,
                "history": history},
        "eval": {"max_new_tokens": args.max_new_tokens, "scored_with": "sspo_jax.rewards.exact_match_reward",
                 "select_set": {"problems": args.select_problems, "greedy": select_stats},
                 "held_out_set": {"problems": args.eval_problems, "greedy": greedy,
                                  f"sampled_t1_x{args.samples}": sampled}},
    }
    with open(os.path.join(args.out, "meta.json"), "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")

    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"\nsaved {args.out}: {size / 1e6:.2f} MB ({sorted(os.listdir(args.out))})")
    print(f"SFT steps {sft_steps}; SFT {sft_seconds:.0f}s; total {time.time() - start:.0f}s")
    print(f"held-out greedy:  {json.dumps(greedy)}")
    print(f"held-out T=1 x{args.samples}: {json.dumps(sampled)}")
    for response, gold, score in list(zip(sampled_result["responses"], sampled_result["golds"],
                                          sampled_result["scores"]))[:6]:
        print(f"  [{'ok' if score else '--'}] gold {gold}: {response}")
    if size > MAX_ASSET_BYTES:
        print(f"error: the asset is {size} bytes > {MAX_ASSET_BYTES}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
