"""Small tokenizers built in-process for the data tests (no network, no hub downloads)."""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sspo_jax.data import problems

SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.lru_cache(maxsize=1)
def bpe_tokenizer() -> Tokenizer:
    """A byte-level BPE (vocab 400) trained on arithmetic problems and a few sentences."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [p["prompt"] + " " + p["solution"] for p in problems(200, seed=0)]
    texts += ["Please reason step by step, and put your final answer within \\boxed{}.",
              "What is the sum of the first ten primes?", "Janet has 16 eggs."]
    tok.train_from_iterator(texts, trainer)
    return tok


def hf_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    """`bpe_tokenizer` wrapped for transformers, with a ChatML-like template when `chat`."""
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe_tokenizer(), pad_token="<pad>", eos_token="<|im_end|>",
                                  unk_token="<unk>")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok
