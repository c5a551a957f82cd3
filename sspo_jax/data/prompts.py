"""Prompt text and token ids: the chat template or a plain template, any HF tokenizer.

`PromptEncoder` wraps either a `transformers` tokenizer (``PreTrainedTokenizerFast`` and
friends, whose ``chat_template`` is used when configured) or a bare `tokenizers.Tokenizer`
(plain template only), and resolves the padding id.
"""

from __future__ import annotations

from typing import Any

from sspo_jax.data.config import DataConfig
from sspo_jax.data.records import DataError


def fill_template(template: str, prompt: str, instruction: str) -> str:
    """`template` with ``{instruction}`` then ``{prompt}`` replaced; other braces stay as written."""
    return template.replace("{instruction}", instruction).replace("{prompt}", prompt)


class PromptEncoder:
    """Formats problem texts into prompts and encodes them.

    Args:
      tokenizer: a `transformers` tokenizer or a `tokenizers.Tokenizer`.
      cfg: `DataConfig` (template, instruction, system_prompt, add_special_tokens, pad_token_id).
    Attributes:
      use_chat: whether the chat template is applied.
      pad_id: the padding token id (``cfg.pad_token_id``, else the tokenizer's pad token, else
        its EOS token).
    Raises:
      DataError: ``template="chat"`` without a chat template, or no padding id can be found.
    """

    def __init__(self, tokenizer: Any, cfg: DataConfig) -> None:
        self.tokenizer, self.cfg = tokenizer, cfg
        self._is_hf = hasattr(tokenizer, "apply_chat_template")
        has_chat = self._is_hf and bool(getattr(tokenizer, "chat_template", None))
        if cfg.template == "chat" and not has_chat:
            raise DataError("data.template='chat' but the tokenizer has no chat template; use "
                            "data.template='plain' or 'auto', or give the tokenizer a chat_template")
        self.use_chat = cfg.template == "chat" or (cfg.template == "auto" and has_chat)
        self.pad_id = self._pad_id()

    def _pad_id(self) -> int:
        if self.cfg.pad_token_id is not None:
            return self.cfg.pad_token_id
        if self._is_hf:
            for attr in ("pad_token_id", "eos_token_id"):
                value = getattr(self.tokenizer, attr, None)
                if isinstance(value, int):
                    return value
        else:
            padding = getattr(self.tokenizer, "padding", None)
            if padding and padding.get("pad_id") is not None:
                return int(padding["pad_id"])
        raise DataError("the tokenizer has no pad token (nor EOS): set data.pad_token_id "
                        "(any id works: prompts carry an explicit attention mask)")

    def format(self, prompt: str) -> str:
        """The full prompt text for problem text `prompt` (template applied)."""
        text = fill_template(self.cfg.prompt_template, prompt, self.cfg.instruction)
        if not self.use_chat:
            return text
        messages = [] if self.cfg.system_prompt is None else [{"role": "system", "content": self.cfg.system_prompt}]
        messages.append({"role": "user", "content": text})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (special tokens added only if ``data.add_special_tokens``)."""
        special = self.cfg.add_special_tokens
        if self._is_hf:
            return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])
        return list(self.tokenizer.encode(text, add_special_tokens=special).ids)
