"""Stage 1 of an RL step, the rollout: G sampled responses per prompt, as a host `Rollout`.

    rollout, batch = sample_rollout(policy, params, prompts, sampling, key, mesh=mesh)
    texts = decode_responses(tokenizer, rollout)

In a multi-process job every process passes the same global prompt batch and gets back the rows
(and the prompts) its own devices hold.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh

from sspo_jax.data import PromptBatch
from sspo_jax.parallel import local_rows, multiprocess, process_rows
from sspo_jax.rollout import GenerationResult, SamplingConfig, generate
from sspo_jax.train.records import Rollout


def rollout_from_generation(gen: GenerationResult) -> Rollout:
    """The host rows of a generation result (numpy copies; [B, P + N] and [B])."""
    return Rollout(tokens=np.asarray(gen.tokens), attention_mask=np.asarray(gen.attention_mask),
                   response_mask=np.asarray(gen.response_mask), sampler_logp=np.asarray(gen.sampler_logp),
                   lengths=np.asarray(gen.response_lengths), truncated=np.asarray(gen.truncated),
                   prompt_width=int(gen.prompt_len))


def sample_rollout(policy: Any, params: Any, batch: PromptBatch, sampling: SamplingConfig, key: jax.Array, *,
                   mesh: Optional[Mesh] = None) -> tuple[Rollout, PromptBatch]:
    """Samples every row of `batch` (prompts already repeated G times) with the policy.

    Args:
      policy, params: the policy's `nnx.GraphDef` and parameters.
      batch: the global prompt batch, input_ids [N, P] left-padded.
      sampling: the sampling settings (stop tokens and pad id resolved).
      key: the PRNG key of this rollout.
      mesh: the device mesh (prompts and cache split over its batch axes), or None.
    Returns:
      (`Rollout` of this process's rows, the `PromptBatch` of those rows); all rows in one process.
    """
    gen = generate((policy, params), batch.input_ids, batch.attention_mask, sampling, key, mesh=mesh,
                   replicate_outputs=False)
    if multiprocess():  # decode and verify only the rows this process's devices hold
        gen = jax.tree.map(local_rows, gen)
        batch = batch.select(process_rows(mesh, len(batch.golds)))
    return rollout_from_generation(gen), batch


def decode_responses(tokenizer: Any, rollout: Rollout) -> list[str]:
    """Response texts of a rollout's rows (tokens [N, P + T]), one per row.

    Each row's first ``lengths[b]`` response tokens are decoded with special tokens skipped (so the
    stop token is dropped); padding after them is excluded.
    """
    p = rollout.prompt_width
    return [tokenizer.decode(rollout.tokens[i, p:p + rollout.lengths[i]].tolist(), skip_special_tokens=True)
            for i in range(rollout.tokens.shape[0])]
