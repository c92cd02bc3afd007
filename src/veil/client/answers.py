"""Checking a node's answers: every chat answer must carry the node's receipt for it.

`ReceiptChecker` holds what one verified node is checked against (its address, its models'
weights hashes); `ReceiptCheckingTransport` (and its async twin) wrap the OHTTP transport so a
chat answer passes only with a verified receipt: a whole answer whose receipt fails is never
returned, a streamed one raises `ReceiptRefused` before `[DONE]` is passed on.

The answer is the node's to write, so it is decoded as hostile input: every event and whole
body is size- and depth-bounded before the JSON decoder sees it (`veil.wire.boundedjson`; a
dependency raises Python's recursion limit, so a deeply nested answer would otherwise overflow
the C stack and kill the user's gateway). What fails the bounds is `ReceiptRefused` with
check `malformed`, like any other answer that is not a chat completion.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import httpx

from veil.client.errors import NodeRejected, ReceiptRefused, ReceiptStoreError
from veil.client.receipts import ReceiptStore
from veil.client.transport import REQUEST_DIGEST_EXTENSION
from veil.identity.descriptor import ModelEntry
from veil.identity.errors import ReceiptError
from veil.identity.receipt import Receipt, check_receipt
from veil.wire import boundedjson
from veil.wire.errors import Malformed, MessageTooLarge
from veil.wire.http import TICKET_ID_EXTENSION

__all__ = [
    "MAX_ANSWER_BYTES",
    "MAX_EVENT_BYTES",
    "AsyncReceiptCheckingTransport",
    "ReceiptChecker",
    "ReceiptCheckingTransport",
    "VerifiedReceipt",
]

log = logging.getLogger(__name__)

_CHAT_PATH = "/chat/completions"
# One streamed event (a token's chunk, or the last one with the receipt) is far smaller.
MAX_EVENT_BYTES = 1 << 20
# A whole answer: the transport's cap on a plain answer, and far above a completion's size.
MAX_ANSWER_BYTES = 16 << 20
# The client's own request, decoded to learn its model (the node's parser bounds it again).
_MAX_REQUEST_BYTES = 16 << 20


def _decode(data: bytes, max_bytes: int, what: str) -> Any:
    """Bounded JSON of the node's answer; anything else is a `malformed` answer."""
    try:
        return boundedjson.loads(data, max_bytes=max_bytes, what=what)
    except (Malformed, MessageTooLarge) as err:
        raise ReceiptRefused(str(err), check="malformed") from None


@dataclass(frozen=True)
class VerifiedReceipt:
    """A receipt that passed every check, with what it was checked against."""

    receipt: Receipt
    model_id: str
    streamed: bool
    checks: tuple[str, ...]  # the checks of RECEIPT_CHECKS made (+ usage, ticket_id)

    @property
    def status(self) -> str:
        return "verified"


class ReceiptChecker:
    """Checks receipts against one verified node: its address and its models' hashes.

    `begin(request)` starts the check of one chat request (None for anything else); the
    returned `_AnswerCheck` is fed the answer's bytes as they pass and gives its verdict.
    """

    def __init__(
        self,
        address: str,
        models: Sequence[ModelEntry],
        *,
        store: ReceiptStore | None = None,
        on_receipt: Callable[[VerifiedReceipt], None] | None = None,
        max_kept: int | None = None,
    ) -> None:
        self.address = address
        self.models = {m.model_id: m.weights_hash for m in models}
        self.store = store
        self.on_receipt = on_receipt
        self.receipts: list[VerifiedReceipt] = []
        self.max_kept = max_kept  # keep only the latest receipts in `receipts` (None: all)
        self.before_send: Callable[[], None] | None = None  # e.g. re-verify an aging node

    def begin(self, request: httpx.Request, body: bytes) -> _AnswerCheck | None:
        if self.before_send is not None:
            self.before_send()
        if request.method != "POST" or not request.url.path.endswith(_CHAT_PATH):
            return None
        ticket_id = request.extensions.get(TICKET_ID_EXTENSION)
        if ticket_id is not None and (not isinstance(ticket_id, bytes) or len(ticket_id) != 32):
            raise ValueError(f"{TICKET_ID_EXTENSION} must be 32 bytes")
        try:
            parsed = boundedjson.loads(body, max_bytes=_MAX_REQUEST_BYTES)
            model_id = parsed["model"]
            messages = parsed.get("messages")
        except (Malformed, MessageTooLarge, KeyError, TypeError, AttributeError):
            return _AnswerCheck(self, "", None, None)  # the node refuses it; a 200 is refused
        if not isinstance(model_id, str):
            return _AnswerCheck(self, "", None, None)
        if model_id not in self.models:
            raise NodeRejected(
                f"the verified node does not serve {model_id!r}; nothing was sent",
                check="model",
            )
        return _AnswerCheck(self, model_id, self.models[model_id], messages, ticket_id)

    def _accept(self, result: VerifiedReceipt, messages: Any, answer: str) -> None:
        self.receipts.append(result)
        if self.max_kept is not None and len(self.receipts) > self.max_kept:
            del self.receipts[: len(self.receipts) - self.max_kept]
        if self.store is not None:
            history = self.store.history_enabled
            try:
                self.store.add(
                    result.receipt,
                    model_id=result.model_id,
                    prompt=json.dumps(messages) if history else None,
                    answer=answer if history else None,
                )
            except ReceiptStoreError as err:  # the answer is verified; only keeping it failed
                log.warning("receipt verified but not stored: %s", err)
        if self.on_receipt is not None:
            self.on_receipt(result)


class _AnswerCheck:
    """Sans-IO check of one answer: bytes in (`feed` / `whole`), verdict out."""

    def __init__(
        self,
        checker: ReceiptChecker,
        model_id: str,
        model_hash: bytes | None,
        messages: Any,
        ticket_id: bytes | None = None,
    ) -> None:
        self._checker = checker
        self._model_id = model_id
        self._model_hash = model_hash
        self._messages = messages
        self._ticket_id = ticket_id  # the ticket the request carried; the receipt must name it
        self.request_digest: bytes | None = None
        self._buffer = b""
        self._parts: list[str] = []
        self._receipt: Any = None
        self._receipts_seen = 0
        self._usage: Any = None
        self._done = False
        self._verified = False

    # -- streamed answers (server-sent events) --
    def feed(self, data: bytes) -> bytes:
        """The bytes that may pass now: whole events; `[DONE]` only once the receipt verified.

        SSE comment lines (a node's stream padding) are dropped: padding hides sizes on the
        way from the node, and has nothing to say to the local caller."""
        if self._done:  # nothing follows [DONE] but a node's padding
            return b""
        self._buffer += data.replace(b"\r\n", b"\n")
        out = bytearray()
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            event = _without_comments(event, whole=True)
            payload = b"\n".join(
                line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
            )
            if payload == b"[DONE]":
                self._verify(streamed=True)
                self._done = True
                out += event + b"\n\n"
                self._buffer = b""  # nothing follows [DONE] but a node's padding
                break
            if payload:
                self._event(payload)
            if event.strip():
                out += event + b"\n\n"
        if len(self._buffer) > MAX_EVENT_BYTES:  # an event that never ends
            raise ReceiptRefused(
                f"an answer event is larger than {MAX_EVENT_BYTES} bytes", check="malformed"
            )
        return bytes(out)

    def _event(self, payload: bytes) -> None:
        obj = _decode(payload, MAX_EVENT_BYTES, "an answer event")
        if not isinstance(obj, dict):
            raise ReceiptRefused("an answer event is not an object", check="malformed")
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str):
                    self._parts.append(content)
        if "veil_receipt" in obj:
            self._receipts_seen += 1
            self._receipt = obj["veil_receipt"]
            self._usage = obj.get("usage")

    def finish(self) -> bytes:
        """End of a streamed body: verify (if `[DONE]` did not already) and pass the rest."""
        if not self._done:
            self._verify(streamed=True)
            self._done = True
        rest, self._buffer = self._buffer, b""
        return _without_comments(rest)

    # -- whole answers --
    def whole(self, body: bytes) -> None:
        obj = _decode(body, MAX_ANSWER_BYTES, "the answer")
        try:
            content = obj["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ReceiptRefused("the answer is not a chat completion", check="malformed") from None
        self._parts = [content] if isinstance(content, str) else []
        if "veil_receipt" in obj:
            self._receipts_seen = 1
            self._receipt = obj["veil_receipt"]
        self._usage = obj.get("usage")
        self._verify(streamed=False)

    def _verify(self, *, streamed: bool) -> None:
        if self._verified:
            return
        if self._model_hash is None:
            raise ReceiptRefused("the request named no model this node serves", check="model")
        if self._receipts_seen == 0:
            raise ReceiptRefused("the answer carries no receipt", check="missing")
        if self._receipts_seen > 1:
            raise ReceiptRefused("the answer carries more than one receipt", check="malformed")
        if self.request_digest is None:
            raise ReceiptRefused(
                "the digest of the sent request is unknown", check="request_digest"
            )
        answer = "".join(self._parts)
        try:
            receipt = Receipt.from_json(self._receipt)
            checks = check_receipt(
                receipt,
                self._checker.address,
                request_digest=self.request_digest,
                answer_text=answer,
                model_hash=self._model_hash,
            )
        except ReceiptError as err:
            log.warning("receipt refused: %s (%s)", err.check, type(err).__name__)
            raise ReceiptRefused(f"receipt refused: {err}", check=err.check, cause=err) from None
        if isinstance(self._usage, dict):
            counts = (self._usage.get("prompt_tokens"), self._usage.get("completion_tokens"))
            if counts != (receipt.prompt_tokens, receipt.completion_tokens):
                raise ReceiptRefused("the receipt's token counts differ from usage", check="usage")
            checks.append("usage")
        if self._ticket_id is not None:
            if receipt.ticket_id != self._ticket_id:
                log.warning("receipt refused: ticket_id")
                raise ReceiptRefused(
                    "the receipt does not name the payment the request carried (ticket or tokens)",
                    check="ticket_id",
                )
            checks.append("ticket_id")
        self._verified = True
        result = VerifiedReceipt(receipt, self._model_id, streamed, tuple(checks))
        self._checker._accept(result, self._messages, answer)


def _without_comments(data: bytes, *, whole: bool = False) -> bytes:
    """`data` less its SSE comment lines (`:...`); the last line counts only if `whole`."""
    if b":" not in data:
        return data
    lines = data.split(b"\n")
    last = lines.pop()
    kept = [line for line in lines if not line.startswith(b":")]
    if not (whole and last.startswith(b":")):
        kept.append(last)
    return b"\n".join(kept)


def _checked_response(
    response: httpx.Response,
    *,
    stream: httpx.SyncByteStream | httpx.AsyncByteStream | None = None,
    content: bytes | None = None,
) -> httpx.Response:
    """The answer handed on: same status and headers, body from `stream` or `content`."""
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "content-length"]
    return httpx.Response(
        response.status_code,
        headers=headers,
        stream=stream,
        content=content,
        extensions=response.extensions,
    )


def _is_sse(response: httpx.Response) -> bool:
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return media == "text/event-stream"


class _CheckedSyncStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.Response, check: _AnswerCheck) -> None:
        self._inner, self._check = inner, check

    def __iter__(self) -> Iterator[bytes]:
        for piece in cast(httpx.SyncByteStream, self._inner.stream):
            if out := self._check.feed(piece):
                yield out
        if out := self._check.finish():
            yield out

    def close(self) -> None:
        self._inner.stream.close()  # type: ignore[union-attr]


class _CheckedAsyncStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.Response, check: _AnswerCheck) -> None:
        self._inner, self._check = inner, check

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self._inner.stream:  # type: ignore[union-attr]
            if out := self._check.feed(piece):
                yield out
        if out := self._check.finish():
            yield out

    async def aclose(self) -> None:
        await self._inner.stream.aclose()  # type: ignore[union-attr]


def _start(check: _AnswerCheck, response: httpx.Response) -> bool:
    """Whether `response` needs checking; sets the digest of what was sent."""
    if response.status_code != 200:
        return False  # an error answer carries no completion (the SDK raises on it)
    digest = response.extensions.get(REQUEST_DIGEST_EXTENSION)
    check.request_digest = digest if isinstance(digest, bytes) else None
    return True


def _capped(body: bytearray, piece: bytes) -> bytes:
    """`piece`, unless it takes a whole answer over `MAX_ANSWER_BYTES` (then `malformed`)."""
    if len(body) + len(piece) > MAX_ANSWER_BYTES:
        raise ReceiptRefused(
            f"the answer is larger than {MAX_ANSWER_BYTES} bytes", check="malformed"
        )
    return piece


class ReceiptCheckingTransport(httpx.BaseTransport):
    """Wraps an `OhttpTransport`: chat answers pass only with a verified receipt."""

    def __init__(self, inner: httpx.BaseTransport, checker: ReceiptChecker) -> None:
        self._inner, self.checker = inner, checker

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        check = self.checker.begin(request, request.read())
        response = self._inner.handle_request(request)
        if check is None or not _start(check, response):
            return response
        if _is_sse(response):
            return _checked_response(response, stream=_CheckedSyncStream(response, check))
        body = bytearray()
        try:
            for piece in response.stream:  # type: ignore[union-attr]
                body += _capped(body, piece)
        finally:
            response.stream.close()  # type: ignore[union-attr]
        data = bytes(body)
        check.whole(data)  # raises: the answer is never returned
        return _checked_response(response, content=data)

    def close(self) -> None:
        self._inner.close()


class AsyncReceiptCheckingTransport(httpx.AsyncBaseTransport):
    """Async twin of `ReceiptCheckingTransport`."""

    def __init__(self, inner: httpx.AsyncBaseTransport, checker: ReceiptChecker) -> None:
        self._inner, self.checker = inner, checker

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        check = self.checker.begin(request, await request.aread())
        response = await self._inner.handle_async_request(request)
        if check is None or not _start(check, response):
            return response
        if _is_sse(response):
            return _checked_response(response, stream=_CheckedAsyncStream(response, check))
        body = bytearray()
        try:
            async for piece in response.stream:  # type: ignore[union-attr]
                body += _capped(body, piece)
        finally:
            await response.stream.aclose()  # type: ignore[union-attr]
        data = bytes(body)
        check.whole(data)
        return _checked_response(response, content=data)

    async def aclose(self) -> None:
        await self._inner.aclose()
