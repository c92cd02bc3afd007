"""A verified session with one node: check the node before sending, check every answer after.

`connect(relay_url, node_id, mode=...)`:

1. fetches the node's signed descriptor through the relay (`GET /relay/{node_id}/descriptor`,
   so the node does not see who asks);
2. verifies it under the mode's policy (`veil.attest.policy.verify_node`; `anonymous` accepts
   `dev` nodes and then carries the "no hardware isolation" warning; `tee` refuses them);
3. pins the OHTTP keys to the descriptor's (`report.key_check()`), so nothing is sealed to a
   key the verified node did not list; when the node rotates its keys (or the descriptor
   nears expiry) the descriptor is fetched and verified again, and must name the same address;
4. wraps the OHTTP transport in a receipt check (`ReceiptCheckingTransport`): every chat
   answer must end with a receipt signed by the descriptor's address over the digest of the
   encapsulated request this client sent, the answer text it received, and the model's weights
   hash. A whole answer whose receipt fails or is missing raises `ReceiptRefused` and is never
   returned; a streamed one raises `ReceiptRefused` at its end, before `[DONE]` is passed on.
   A request that carries a payment ticket states its id in the request extension
   `TICKET_ID_EXTENSION`; the receipt must then name exactly that ticket (check `ticket_id`),
   since a receipt naming another ticket, or none, does not bind the payment to the answer.

Verified receipts go to a `ReceiptStore` when one is given (prompt and answer only when the
store's history is on, and then encrypted) and to `session.receipts`.

    session = connect("http://127.0.0.1:8780", "node-a")
    client = session.openai()          # the unchanged openai SDK
    client.chat.completions.create(model="smollm2-135m-instruct", messages=[...])
    session.receipts[-1]               # the verified receipt of that answer
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from veil.attest.errors import KeyConfigError, NodeRejected
from veil.attest.policy import Policy, PrivacyMode, VerificationReport, verify_node
from veil.client.errors import DescriptorUnavailable, ReceiptRefused, ReceiptStoreError
from veil.client.receipts import ReceiptStore
from veil.client.transport import (
    REQUEST_DIGEST_EXTENSION,
    AsyncOhttpTransport,
    OhttpTransport,
    relay_keys_url,
    relay_url_for,
)
from veil.identity.descriptor import MAX_DESCRIPTOR_BYTES, ModelEntry
from veil.identity.errors import ReceiptError
from veil.identity.receipt import Receipt, check_receipt
from veil.wire.http import INVALID_BASE_URL, MEDIA_DESCRIPTOR, TICKET_ID_EXTENSION
from veil.wire.ohttp import KeyConfig

__all__ = [
    "INVALID_BASE_URL",
    "TICKET_ID_EXTENSION",
    "AsyncReceiptCheckingTransport",
    "ReceiptChecker",
    "ReceiptCheckingTransport",
    "VeilSession",
    "VerifiedReceipt",
    "connect",
    "fetch_descriptor",
    "relay_descriptor_url",
    "verified_openai",
]

log = logging.getLogger(__name__)

_CHAT_PATH = "/chat/completions"


def relay_descriptor_url(relay_url: str, node_id: str) -> str:
    """The node's signed descriptor fetched through the relay."""
    return relay_url_for(relay_url, node_id) + "/descriptor"


def fetch_descriptor(
    relay_url: str,
    node_id: str,
    *,
    transport: httpx.BaseTransport | None = None,
    timeout: float = 30.0,
) -> bytes:
    """The descriptor bytes as the relay passed them on (verify them before any use)."""
    # Built bare, so the HTTP client adds none of its default headers (user-agent...).
    request = httpx.Request(
        "GET", relay_descriptor_url(relay_url, node_id), headers={"accept": MEDIA_DESCRIPTOR}
    )
    with httpx.Client(
        transport=transport or httpx.HTTPTransport(), timeout=timeout, follow_redirects=False
    ) as http:
        try:
            response = http.send(request, stream=True)
            try:
                if response.status_code != 200:
                    raise DescriptorUnavailable(
                        f"descriptor fetch answered HTTP {response.status_code}"
                    )
                data = bytearray()
                for piece in response.iter_bytes():
                    data += piece
                    if len(data) > MAX_DESCRIPTOR_BYTES:
                        raise DescriptorUnavailable("descriptor too large")
            finally:
                response.close()
        except httpx.HTTPError as err:
            raise DescriptorUnavailable(f"descriptor fetch failed: {type(err).__name__}") from None
    return bytes(data)


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
            parsed = json.loads(body)
            model_id = parsed["model"]
            messages = parsed.get("messages")
        except (ValueError, KeyError, TypeError, AttributeError):
            return _AnswerCheck(self, "", None, None)  # the node refuses it; a 200 is refused
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
        """The bytes that may pass now: whole events; `[DONE]` only once the receipt verified."""
        if self._done:
            return data
        self._buffer += data.replace(b"\r\n", b"\n")
        out = bytearray()
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            payload = b"\n".join(
                line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
            )
            if payload == b"[DONE]":
                self._verify(streamed=True)
                self._done = True
                out += event + b"\n\n" + self._buffer
                self._buffer = b""
                break
            if payload:
                self._event(payload)
            out += event + b"\n\n"
        return bytes(out)

    def _event(self, payload: bytes) -> None:
        try:
            obj = json.loads(payload)
        except ValueError:
            raise ReceiptRefused("an answer event is not JSON", check="malformed") from None
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
        return rest

    # -- whole answers --
    def whole(self, body: bytes) -> None:
        try:
            obj = json.loads(body)
            content = obj["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
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
                    "the receipt does not name the payment ticket the request carried",
                    check="ticket_id",
                )
            checks.append("ticket_id")
        self._verified = True
        result = VerifiedReceipt(receipt, self._model_id, streamed, tuple(checks))
        self._checker._accept(result, self._messages, answer)


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
        for piece in self._inner.stream:
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
        try:
            body = b"".join(response.stream)  # type: ignore[union-attr]
        finally:
            response.stream.close()  # type: ignore[union-attr]
        check.whole(body)  # raises: the answer is never returned
        return _checked_response(response, content=body)

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
        try:
            body = b"".join([piece async for piece in response.stream])  # type: ignore[union-attr]
        finally:
            await response.stream.aclose()  # type: ignore[union-attr]
        check.whole(body)
        return _checked_response(response, content=body)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class VeilSession:
    """One verified node: its report, a pinned transport, and the receipts of its answers."""

    relay_url: str
    node_id: str
    report: VerificationReport
    checker: ReceiptChecker
    policy: Policy
    model_id: str | None = None
    transport_kwargs: dict[str, Any] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    refresh_margin_s: int = 60  # verify again this long before the descriptor expires

    def __post_init__(self) -> None:
        self.checker.before_send = self._before_send

    def reverify(self) -> VerificationReport:
        """Fetch and verify the descriptor again (keys rotated, or it is about to expire).

        The node must keep its address: receipts are checked against it, and another
        address is another node (`NodeRejected`, check `identity`).
        """
        data = fetch_descriptor(
            self.relay_url, self.node_id, transport=self.transport_kwargs.get("outer")
        )
        report = verify_node(data, self.policy, int(self.clock()), model_id=self.model_id)
        if report.address != self.address:
            raise NodeRejected(
                f"the node's descriptor now names {report.address}, not {self.address}",
                check="identity",
                report=report,
            )
        self.report = report
        self.checker.models = {m.model_id: m.weights_hash for m in report.approved_models}
        log.info("node %s verified again", report.address)
        return report

    def _before_send(self) -> None:
        assert self.report.descriptor is not None
        if self.clock() >= self.report.descriptor.expires_at - self.refresh_margin_s:
            self.reverify()

    def _key_check(self, configs: tuple[KeyConfig, ...]) -> None:
        """Keys must be in the verified descriptor; on a miss, verify the node again once."""
        try:
            self.report.key_check(clock=self.clock)(configs)
        except KeyConfigError:
            self.reverify()
            self.report.key_check(clock=self.clock)(configs)

    @property
    def address(self) -> str:
        assert self.report.address is not None
        return self.report.address

    @property
    def attestation_kind(self) -> str:
        assert self.report.descriptor is not None
        return self.report.descriptor.evidence.kind

    @property
    def hardware_isolated(self) -> bool:
        return self.report.hardware_isolated

    @property
    def receipts(self) -> list[VerifiedReceipt]:
        return self.checker.receipts

    def describe(self) -> str:
        """One line for a terminal: address, attestation kind, isolation."""
        isolation = "hardware isolation" if self.hardware_isolated else "no hardware isolation"
        return f"node {self.address}, attestation {self.attestation_kind} ({isolation})"

    def _key_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.transport_kwargs)
        kwargs.setdefault("keys_url", relay_keys_url(self.relay_url, self.node_id))
        kwargs["key_configs"] = self.report.key_configs()
        kwargs["key_check"] = self._key_check
        return kwargs

    def transport(self, *, timeout: httpx.Timeout | None = None) -> ReceiptCheckingTransport:
        """The sync transport; `timeout` replaces the session's for the relay hop (an MPC
        party answers one request in minutes)."""
        kwargs = self._key_kwargs()
        if timeout is not None:
            kwargs["timeout"] = timeout
        inner = OhttpTransport(self.relay_url, self.node_id, **kwargs)
        return ReceiptCheckingTransport(inner, self.checker)

    def async_transport(
        self, *, outer: httpx.AsyncBaseTransport | None = None
    ) -> AsyncReceiptCheckingTransport:
        """The async transport; `outer` reaches the relay (the session's `outer`, if any, is a
        sync transport for descriptor fetches and cannot serve here)."""
        kwargs = self._key_kwargs()
        if outer is not None:
            kwargs["outer"] = outer
        inner = AsyncOhttpTransport(self.relay_url, self.node_id, **kwargs)
        return AsyncReceiptCheckingTransport(inner, self.checker)

    def openai(self):  # type: ignore[no-untyped-def]
        """An `openai.OpenAI` over this session: sealed, key-pinned, receipt-checked."""
        import openai

        return openai.OpenAI(
            base_url=INVALID_BASE_URL,
            api_key="veil",  # dropped by the transport; the SDK insists on one
            max_retries=0,
            http_client=httpx.Client(transport=self.transport()),
        )

    def async_openai(self):  # type: ignore[no-untyped-def]
        import openai

        return openai.AsyncOpenAI(
            base_url=INVALID_BASE_URL,
            api_key="veil",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=self.async_transport()),
        )


def connect(
    relay_url: str,
    node_id: str,
    *,
    mode: PrivacyMode | str = PrivacyMode.ANONYMOUS,
    policy: Policy | None = None,
    model_id: str | None = None,
    store: ReceiptStore | None = None,
    on_receipt: Callable[[VerifiedReceipt], None] | None = None,
    now: int | None = None,
    outer: httpx.BaseTransport | None = None,
    **transport_kwargs: Any,
) -> VeilSession:
    """Fetch and verify the node's descriptor; raise (`NodeRejected`...) before any request.

    `policy` defaults to `Policy.for_mode(mode)`; `model_id`, when given, must be served (and
    approved, where the policy has a release list). `outer` reaches the relay (tests);
    `transport_kwargs` go to `OhttpTransport`.
    """
    policy = policy or Policy.for_mode(mode)
    clock: Callable[[], float] = time.time if now is None else (lambda: now)
    data = fetch_descriptor(relay_url, node_id, transport=outer)
    report = verify_node(data, policy, int(clock()), model_id=model_id)
    assert report.address is not None
    checker = ReceiptChecker(
        report.address, report.approved_models, store=store, on_receipt=on_receipt
    )
    if outer is not None:
        transport_kwargs["outer"] = outer
    return VeilSession(
        relay_url, node_id, report, checker, policy, model_id, transport_kwargs, clock
    )


def verified_openai(relay_url: str, node_id: str, **kwargs: Any):  # type: ignore[no-untyped-def]
    """`connect(...)`, then its `openai.OpenAI` client: verified node, checked receipts."""
    return connect(relay_url, node_id, **kwargs).openai()
