"""The chat-completions request as the node accepts it (`veil.wire.chat`), its refusals as
OpenAI-style 400s (`OpenAIError`)."""

from __future__ import annotations

from veil.wire.chat import ChatCompletionRequest, ChatMessageIn, ChatRequestInvalid
from veil.wire.chat import parse_chat_request as _parse
from veil.wire.http import OpenAIError

__all__ = ["ChatCompletionRequest", "ChatMessageIn", "parse_chat_request"]


def parse_chat_request(raw: bytes) -> ChatCompletionRequest:
    """bytes -> request, or an OpenAIError naming the first problem."""
    try:
        return _parse(raw)
    except ChatRequestInvalid as exc:
        raise OpenAIError(400, str(exc), param=exc.param) from None
