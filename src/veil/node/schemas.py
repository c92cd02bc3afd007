"""The chat-completions request as the node accepts it (`veil.wire.chat`), its refusals as
OpenAI-style 400s (`APIError`)."""

from __future__ import annotations

from veil.node.errors import APIError
from veil.wire.chat import ChatCompletionRequest, ChatMessageIn, ChatRequestInvalid
from veil.wire.chat import parse_chat_request as _parse

__all__ = ["ChatCompletionRequest", "ChatMessageIn", "parse_chat_request"]


def parse_chat_request(raw: bytes) -> ChatCompletionRequest:
    """bytes -> request, or an APIError naming the first problem."""
    try:
        return _parse(raw)
    except ChatRequestInvalid as exc:
        raise APIError(400, str(exc), param=exc.param) from None
