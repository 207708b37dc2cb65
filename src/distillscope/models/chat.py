"""Chat templates and tokenizer identity for transformers tokenizers (no torch needed).

* `render_chat`: the model's own chat template, generation prompt appended, with the run's
  system prompt put first when the messages carry none, and `enable_thinking` handed to the
  template (Qwen3 templates read it; others ignore unknown variables). A tokenizer without a
  template gets a plain "role: content" layout, which is said in its docstring, not guessed.
* `tokenizer_fingerprint`: a hash of the vocabulary and the special tokens, equal for two
  tokenizers that map text to the same ids (the teacher/student check of
  docs/architecture.md#the-model-protocol).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

__all__ = ["chat_messages", "default_eos", "render_chat", "tokenizer_fingerprint"]


def chat_messages(
    messages: Sequence[dict[str, str]], system_prompt: str | None
) -> list[dict[str, str]]:
    """The messages with `system_prompt` prepended unless they already start with a system
    message (an explicit system message wins over the configured one)."""
    out = [{"role": m["role"], "content": m["content"]} for m in messages]
    if system_prompt is not None and not (out and out[0]["role"] == "system"):
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


def render_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    *,
    system_prompt: str | None,
    enable_thinking: bool = True,
) -> str:
    """Prompt text for `messages`, ending where the assistant's answer starts.

    Without a chat template the layout is "role: content" lines followed by "assistant:"."""
    msgs = chat_messages(messages, system_prompt)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
        )
        return str(text)
    lines = [f"{m['role']}: {m['content']}" for m in msgs]
    return "\n".join([*lines, "assistant:"])


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 (first 16 hex digits) of the sorted vocabulary, added tokens included, and the
    special tokens with their ids."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    specials = sorted(
        (str(tok), int(tokenizer.convert_tokens_to_ids(tok)))
        for tok in getattr(tokenizer, "all_special_tokens", [])
    )
    blob = json.dumps({"vocab": vocab, "special": specials}, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def default_eos(config: Any, generation_config: Any, tokenizer: Any) -> tuple[int, ...]:
    """The EOS set: the generation config's eos_token_id (else the model config's), plus the
    tokenizer's EOS token."""
    eos = getattr(generation_config, "eos_token_id", None)
    eos = getattr(config, "eos_token_id", None) if eos is None else eos
    ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return tuple(sorted(int(i) for i in ids))


class ChatTokenizerMixin:
    """Text side of the model protocol for backends holding an HF tokenizer: needs
    `self.tokenizer`, `self.system_prompt` and `self.enable_thinking`."""

    tokenizer: Any
    system_prompt: str | None
    enable_thinking: bool

    def tokenizer_fingerprint(self) -> str:
        return tokenizer_fingerprint(self.tokenizer)

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        text = render_chat(
            self.tokenizer,
            messages,
            system_prompt=self.system_prompt,
            enable_thinking=self.enable_thinking,
        )
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        """Faithful decoding, special tokens shown (Completion.text hides them)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)
