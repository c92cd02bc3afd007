"""Chat messages to prompt token ids through the model's own chat template."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from veil.engine.errors import InvalidGenerationRequest

__all__ = ["ROLES", "ChatMessage", "encode_chat"]

ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class ChatMessage:
    role: str  # one of ROLES; "developer" is OpenAI's newer name for "system"
    content: str


def encode_chat(tokenizer: Any, messages: list[ChatMessage]) -> list[int]:
    """Apply the chat template and ask for the assistant's turn."""
    if not messages:
        raise InvalidGenerationRequest("messages must contain at least one message", "messages")
    rendered = []
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InvalidGenerationRequest(
                f"messages[{i}].role {m.role!r} is not one of {', '.join(ROLES)}",
                f"messages[{i}].role",
            )
        rendered.append(
            {"role": "system" if m.role == "developer" else m.role, "content": m.content}
        )
    ids = tokenizer.apply_chat_template(
        rendered, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return [int(t) for t in ids]
