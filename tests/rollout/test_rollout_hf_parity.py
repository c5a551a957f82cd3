"""Greedy `generate` equals transformers' greedy `generate()` on the same random checkpoint."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from transformers import Qwen2Config as HFQwen2Config
from transformers import Qwen2ForCausalLM as HFQwen2ForCausalLM

from sspo_jax.models import from_pretrained
from sspo_jax.rollout import SamplingConfig, generate

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("tied", [True, False])
def test_greedy_generation_matches_transformers(tmp_path, tied):
    torch.manual_seed(0)
    cfg = HFQwen2Config(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
                        tie_word_embeddings=tied, eos_token_id=7, pad_token_id=0)
    hf = HFQwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper logits than the default init, so that greedy choices are not near-ties
        for name, p in hf.named_parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    hf.save_pretrained(str(tmp_path))
    model = from_pretrained(tmp_path)

    rng = np.random.default_rng(0)
    lengths = [6, 3, 8]
    tokens = np.zeros((3, 8), np.int64)
    mask = np.zeros((3, 8), np.int64)
    for i, n in enumerate(lengths):  # left padding
        tokens[i, 8 - n:] = rng.integers(8, 300, n)
        mask[i, 8 - n:] = 1
    new = 12
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask), max_new_tokens=new,
                          do_sample=False, eos_token_id=7, pad_token_id=0).numpy()[:, 8:]
    out = generate(model, tokens, mask, SamplingConfig(max_new_tokens=new, temperature=0.0, eos_token_ids=(7,),
                                                        pad_token_id=0, prompt_buckets=(8,)), jax.random.key(0))
    ours = np.asarray(out.responses)
    width = ref.shape[1]  # transformers stops early when every row has finished
    np.testing.assert_array_equal(ours[:, :width], ref)
    assert np.all(ours[:, width:] == 0)
