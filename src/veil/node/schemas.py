"""The chat-completions request as the node accepts it, validated into precise errors."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from veil.node.errors import APIError

__all__ = ["ChatCompletionRequest", "ChatMessageIn", "parse_chat_request"]

_ROLES = ("system", "developer", "user", "assistant")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str = Field(strict=True)


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str = Field(strict=True)
    content: StrictStr | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = Field(default=False, strict=True)


class ChatCompletionRequest(BaseModel):
    """Fields Veil honours; other OpenAI fields are accepted and ignored unless listed below."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(strict=True, min_length=1)
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, strict=True)
    max_completion_tokens: int | None = Field(default=None, strict=True)
    temperature: float | None = None
    top_p: float | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: int | None = Field(default=None, strict=True)
    stream: bool = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, strict=True)

    @property
    def completion_limit(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


# OpenAI features this node does not implement: refuse them rather than silently ignore them.
_UNSUPPORTED = {
    "tools": "tool calling",
    "functions": "function calling",
    "logprobs": "log probabilities",
    "response_format": "structured output",
}


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[TextPart]", "function-after[...]"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def parse_chat_request(raw: bytes) -> ChatCompletionRequest:
    """bytes -> request, or an APIError naming the first problem."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(400, f"the request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise APIError(
            400, f"the request body is not valid JSON: {exc.msg} at line {exc.lineno}"
        ) from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "the request contains an unpaired UTF-16 surrogate escape") from None
    for key, feature in _UNSUPPORTED.items():
        if data.get(key) not in (None, False, []):
            raise APIError(400, f"{feature} ({key}) is not supported by this node", param=key)
    try:
        req = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = _param(tuple(err["loc"]))
        if err["type"] == "missing":
            raise APIError(400, f"missing required parameter: {param}", param=param) from None
        raise APIError(400, f"invalid {param}: {err['msg']}", param=param) from None
    for i, m in enumerate(req.messages):
        if m.role not in _ROLES:
            raise APIError(
                400,
                f"messages[{i}].role {m.role!r} is not supported; use one of {', '.join(_ROLES)}",
                param=f"messages[{i}].role",
            )
    if req.n not in (None, 1):
        raise APIError(400, "only n=1 is supported", param="n")
    return req
