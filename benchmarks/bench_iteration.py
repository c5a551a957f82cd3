"""Whole-RL-iteration benchmark: `sspo_jax.train.Trainer.step` vs a plain PyTorch loop doing the same work.

One iteration on the shipped tiny model (``builtin:tiny-arith``) and the built-in arithmetic task:
take the next batch of B prompts x G samples, sample responses at temperature 1 (up to
``sampling.max_new_tokens``), decode and score them with the same reward code, compute group
z-score advantages, compute the behaviour log-probs with a no-grad forward, then one AdamW step
(after global-norm clipping) on the clipped token-ratio loss, token-mean.

* **sspo_jax**: ``Trainer.step`` of ``configs/tiny_grpo.yaml`` with the KL term off and
  token-mean aggregation (what the torch loop implements); ``--preset sspo`` times SSPO instead
  (segment ratios, entropy-scaled bounds: more work than the torch loop does).
* **torch**: transformers `Qwen2ForCausalLM` loaded from the same checkpoint, ``generate()``
  with ``do_sample=True, temperature=1, top_k=0, top_p=1``, the library's reward function on the
  decoded texts, the advantages, a no-grad forward for the old log-probs, and a forward +
  backward + ``clip_grad_norm_`` + ``torch.optim.AdamW`` step, as a hand-written TRL-style loop.

Both sides read the same prompt batches (two batchers over the same data config). Responses
differ (different samplers), so the figure is time per iteration and generated tokens per
second, with each side's mean response length recorded. Timings: median / min / max over
``--iterations`` after ``--warmup`` iterations (which include JAX's compilation). Writes
``benchmarks/results/iteration.json``::

    .venv/bin/python benchmarks/bench_iteration.py [--batch-size 16] [--iterations 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import RESULTS_DIR, summarize_times, write_json  # noqa: E402

from sspo_jax.data import PromptBatcher, build_source  # noqa: E402
from sspo_jax.rewards import compute_rewards  # noqa: E402
from sspo_jax.train import Trainer  # noqa: E402
from sspo_jax.train.config import load_config, resolve_model_path  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny_grpo.yaml"


class TorchLoop:
    """The plain PyTorch RL iteration (see the module docstring)."""

    def __init__(self, cfg, model_dir: Path, device: str = "cpu"):
        alg = cfg.algorithm
        self.cfg, self.alg = cfg, alg
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
        self.device = torch.device(device)
        self.model = transformers.Qwen2ForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.b1, cfg.optim.b2),
                                     eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay,
                                     fused=self.device.type == "cuda")
        self.batcher = PromptBatcher(build_source(cfg.data), self.tokenizer, cfg.data)
        eos = self.tokenizer.eos_token_id
        self.eos = eos
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _logp(self, tokens, attn, pos):
        logits = self.model(input_ids=tokens, attention_mask=attn, position_ids=pos).logits[:, :-1].float()
        return torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None])[..., 0]

    def step(self) -> dict:
        t0 = time.perf_counter()
        batch = self.batcher.next_batch()
        ids = torch.from_numpy(batch.input_ids.astype(np.int64)).to(self.device)
        am = torch.from_numpy(batch.attention_mask.astype(np.int64)).to(self.device)
        p = ids.shape[1]
        self.model.eval()
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=am, do_sample=True, temperature=1.0, top_k=0,
                                      top_p=1.0, max_new_tokens=self.cfg.sampling.max_new_tokens,
                                      eos_token_id=self.eos, pad_token_id=self.pad)
        resp = out[:, p:]
        resp_host = resp.cpu()
        is_eos = resp == self.eos
        after_eos = (torch.cumsum(is_eos.int(), 1) - is_eos.int()) > 0  # strictly after the first EOS
        resp_mask = ~after_eos
        lengths = resp_mask.sum(1)
        lengths_host = lengths.cpu()
        texts = [self.tokenizer.decode(resp_host[i, :int(lengths_host[i])].tolist(), skip_special_tokens=True)
                 for i in range(resp.shape[0])]
        rewards = torch.from_numpy(compute_rewards(texts, batch.golds, self.cfg.rewards).total.astype(np.float32))
        rewards = rewards.to(self.device)
        g = rewards.view(-1, self.alg.group_size)
        std = g.std(1, keepdim=True)
        adv = torch.where(std > 0, (g - g.mean(1, keepdim=True)) / (std + self.alg.adv_eps), torch.zeros_like(g))
        adv = adv.view(-1, 1)
        t1 = time.perf_counter()

        attn = torch.cat([am, resp_mask.long()], 1)
        pos = torch.clamp(torch.cumsum(attn, 1) - 1, min=0)
        w = torch.cat([torch.zeros_like(am, dtype=torch.bool), resp_mask], 1)[:, 1:].float()
        with torch.no_grad():
            old = self._logp(out, attn, pos)
        self._sync()
        t2 = time.perf_counter()

        self.model.train()
        logp = self._logp(out, attn, pos)
        ratio = torch.exp(logp - old)
        clipped = torch.clamp(ratio, 1 - self.alg.eps_low, 1 + self.alg.eps_high)
        loss = (-torch.minimum(ratio * adv, clipped * adv) * w).sum() / w.sum().clamp(min=1)
        loss.backward()
        if self.cfg.optim.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self._sync()
        t3 = time.perf_counter()
        return {"time/step": t3 - t0, "time/generate_and_score": t1 - t0, "time/stats": t2 - t1,
                "time/update": t3 - t2, "response_length/mean": float(lengths.float().mean()), "reward/mean": float(rewards.mean())}


def _run(step_fn, warmup: int, iterations: int, rows: int) -> dict:
    for _ in range(warmup):
        step_fn()
    n_rows = rows
    rows = [step_fn() for _ in range(iterations)]
    out = {"iteration": summarize_times([r["time/step"] for r in rows])}
    for key in ("time/generate_and_score", "time/stats", "time/update"):
        out[key.split("/")[1]] = summarize_times([r[key] for r in rows])
    tokens = [r["response_length/mean"] * n_rows for r in rows]
    out["response_tokens_per_s"] = sum(tokens) / sum(r["time/step"] for r in rows)
    out["response_length_mean"] = float(np.mean([r["response_length/mean"] for r in rows]))
    out["reward_mean"] = float(np.mean([r["reward/mean"] for r in rows]))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--preset", default="grpo", help="grpo (matches the torch loop) or another preset")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per iteration (x group size 8)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS_DIR), help="output directory (iteration.json) or a .json path")
    args = ap.parse_args(argv)
    import jax

    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    overrides = [f"algorithm.preset={args.preset}", f"data.batch_size={args.batch_size}",
                 f"sampling.max_new_tokens={args.max_new_tokens}", "checkpoint.enabled=false",
                 "logging.progress=false", "logging.tensorboard=false", "eval.enabled=false"]
    if args.preset == "grpo":
        overrides += ["algorithm.kl_beta=0.0", "algorithm.loss_agg_mode=token-mean"]
    cfg = load_config(args.config, overrides)
    payload: dict = {"benchmark": "bench_iteration", "args": vars(args), "overrides": overrides,
                     "torch_threads": torch.get_num_threads(), "torch_device": device, "load_avg_at_start": list(os.getloadavg()),
                     "rows_per_iteration": cfg.data.batch_size * cfg.algorithm.group_size}
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir, progress=False, echo=lambda _: None, resume=False)
        counter = iter(range(1, 10 ** 6))
        payload["sspo_jax"] = _run(lambda: trainer.step(next(counter)), args.warmup, args.iterations,
                                   payload["rows_per_iteration"])
        trainer.close()
    loop = TorchLoop(cfg, resolve_model_path(cfg.model.path), device)
    payload["torch"] = _run(loop.step, args.warmup, args.iterations, payload["rows_per_iteration"])
    payload["ratio_iteration_time_torch_over_sspo_jax"] = (payload["torch"]["iteration"]["median_s"]
                                                           / payload["sspo_jax"]["iteration"]["median_s"])
    payload["load_avg_at_end"] = list(os.getloadavg())
    out = Path(args.out)
    path = (write_json(out.stem, payload, out.parent) if out.suffix == ".json"
            else write_json("iteration", payload, out))
    s, t = payload["sspo_jax"], payload["torch"]
    print(f"rows {payload['rows_per_iteration']}: sspo_jax {s['iteration']['median_s']:.3f} s/iter "
          f"(gen {s['generate_and_score']['median_s']:.3f}, stats {s['stats']['median_s']:.3f}, "
          f"update {s['update']['median_s']:.3f}); torch {t['iteration']['median_s']:.3f} s/iter "
          f"(gen {t['generate_and_score']['median_s']:.3f}, stats {t['stats']['median_s']:.3f}, "
          f"update {t['update']['median_s']:.3f}); torch/sspo_jax "
          f"{payload['ratio_iteration_time_torch_over_sspo_jax']:.2f}x")
    print(f"[bench_iteration] wrote {path}")
    payload["path"] = str(path)
    return payload


if __name__ == "__main__":
    main()
