"""OpenAI chat completions on the wire: the request as Veil accepts it, and the answer's shapes.

One definition for everything that serves the API: the node (`veil.node.api`) and the local
gateway where it answers itself (the `mpc` mode, `veil.client.gateway`).

* `parse_chat_request(raw)`: bytes -> `ChatCompletionRequest`, or `ChatRequestInvalid` naming
  the first problem (its `param`), in words fit for an OpenAI-style 400;
* `Completion`: one answer's id, creation time and model, and the JSON of its streamed chunks
  (`chunk`, `usage_chunk`, as server-sent events) or of its whole body (`whole`);
* `sse(obj)`, `SSE_DONE`, `usage(prompt, completion)`.

Nothing here logs; nothing here knows who serves the answer.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from veil.wire.boundedjson import MAX_JSON_DEPTH, check_depth
from veil.wire.errors import WireError

__all__ = [
    "SSE_DONE",
    "ChatCompletionRequest",
    "ChatMessageIn",
    "ChatRequestInvalid",
    "Completion",
    "Sampling",
    "parse_chat_request",
    "sse",
    "usage",
]

SSE_DONE = b"data: [DONE]\n\n"
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
SEED_MAX = 2**63 - 1


class ChatRequestInvalid(WireError):
    """A chat request that does not follow the API; `param` names the field (or None)."""

    code = "invalid-chat-request"
    http_status = 400

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


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

    @property
    def limit_param(self) -> str:
        """The name of the field the completion limit came from."""
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def to_sampling(self, *, max_tokens_limit: int | None = None) -> Sampling:
        """The checked sampling settings, or `ChatRequestInvalid` naming the bad field.

        The node and the local gateway run the same checks, so a request the node would
        refuse is refused before the gateway chooses or pays a node.
        """
        requested, param = self.completion_limit, self.limit_param
        if requested is not None and requested < 1:
            raise ChatRequestInvalid(f"{param} must be at least 1", param)
        if requested is not None and max_tokens_limit is not None and requested > max_tokens_limit:
            raise ChatRequestInvalid(
                f"{param} is {requested}, above this node's limit of {max_tokens_limit}", param
            )
        temperature = 1.0 if self.temperature is None else self.temperature
        top_p = 1.0 if self.top_p is None else self.top_p
        if not math.isfinite(temperature):
            raise ChatRequestInvalid("temperature must be a finite number", "temperature")
        if not 0.0 <= temperature <= 2.0:
            raise ChatRequestInvalid("temperature must be between 0 and 2", "temperature")
        if not math.isfinite(top_p):
            raise ChatRequestInvalid("top_p must be a finite number", "top_p")
        if not 0.0 < top_p <= 1.0:
            raise ChatRequestInvalid("top_p must be greater than 0 and at most 1", "top_p")
        stop = self.stop_sequences
        if len(stop) > MAX_STOP_SEQUENCES:
            raise ChatRequestInvalid(
                f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed", "stop"
            )
        if any(not s or len(s) > MAX_STOP_CHARS for s in stop):
            raise ChatRequestInvalid(
                f"each stop sequence must be a non-empty string of at most {MAX_STOP_CHARS} "
                "characters",
                "stop",
            )
        if self.seed is not None and not -SEED_MAX <= self.seed <= SEED_MAX:
            raise ChatRequestInvalid("seed must be a 64-bit signed integer", "seed")
        return Sampling(requested, temperature, top_p, stop, self.seed)


@dataclass(frozen=True)
class Sampling:
    """A request's sampling settings, checked: what every server of the API runs it with."""

    max_tokens: int | None  # completion tokens asked for; None: the server's default
    temperature: float  # 0 means greedy
    top_p: float  # nucleus mass kept, in (0, 1]
    stop: tuple[str, ...]  # the text ends before the first of these
    seed: int | None  # fixes the sampled tokens; None: a fresh seed


# OpenAI features Veil does not implement: refuse them rather than silently ignore them.
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
    """bytes -> request, or `ChatRequestInvalid` naming the first problem."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ChatRequestInvalid(
            f"the request body is not valid UTF-8 (byte {exc.start})"
        ) from None
    if not check_depth(raw, limit=MAX_JSON_DEPTH):
        raise ChatRequestInvalid(f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ChatRequestInvalid(
            f"the request body is not valid JSON: {exc.msg} at line {exc.lineno}"
        ) from None
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        raise ChatRequestInvalid("the request body has a number too long to read") from None
    if not isinstance(data, dict):
        raise ChatRequestInvalid("the request body must be a JSON object")
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ChatRequestInvalid(
            "the request contains an unpaired UTF-16 surrogate escape"
        ) from None
    for key, feature in _UNSUPPORTED.items():
        if data.get(key) not in (None, False, []):
            raise ChatRequestInvalid(f"{feature} ({key}) is not supported", param=key)
    try:
        req = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = _param(tuple(err["loc"]))
        if err["type"] == "missing":
            raise ChatRequestInvalid(f"missing required parameter: {param}", param=param) from None
        raise ChatRequestInvalid(f"invalid {param}: {err['msg']}", param=param) from None
    for i, m in enumerate(req.messages):
        if m.role not in _ROLES:
            raise ChatRequestInvalid(
                f"messages[{i}].role {m.role!r} is not supported; use one of {', '.join(_ROLES)}",
                param=f"messages[{i}].role",
            )
    if req.n not in (None, 1):
        raise ChatRequestInvalid("only n=1 is supported", param="n")
    return req


def sse(obj: Any) -> bytes:
    """One server-sent event carrying `obj` as compact JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class Completion:
    """One answer: its id and creation time, and the JSON shapes it is sent in."""

    def __init__(self, model: str) -> None:
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = model

    def chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        """A streamed `chat.completion.chunk` event with one choice."""
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        }
        return sse(body)

    def usage_chunk(self, counts: dict[str, int]) -> bytes:
        """The extra last chunk of `stream_options.include_usage`: no choices, the usage."""
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": counts,
            }
        )

    def whole(self, text: str, finish: str, counts: dict[str, int], **extra: Any) -> dict[str, Any]:
        """A non-streamed `chat.completion` body."""
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": counts,
            **extra,
        }
