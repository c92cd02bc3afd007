"""httpx transports that send every request as Oblivious HTTP through a relay to one node.

Give one to the unchanged `openai` SDK::

    transport = OhttpTransport(relay_url, node_id, keys_url=relay_keys_url(relay_url, node_id))
    client = openai.OpenAI(base_url="https://node.veil.invalid/v1", api_key="unused",
                           http_client=httpx.Client(transport=transport))

The request (method, path, allowlisted headers, body) is encoded as Binary HTTP and sealed to
the node's key; the relay sees only ciphertext. Answers come back as chunked OHTTP and are opened
chunk by chunk, so a streamed completion yields tokens as they arrive. Fail-closed rules:

* nothing but sealed bytes (and key-list GETs, which carry no request data) leaves the client;
* a chunk that fails authentication, or a stream cut before its final chunk, raises
  `ResponseRefused` / `TruncatedResponse` (`RelayBroke` when the relay connection itself
  broke, which tells a relay failure from the node's); a plain (non-chunked) answer is checked whole
  before any of it is returned;
* an unknown-key answer (RFC 9458 `ohttp-key` problem) makes the transport refetch the key
  list and retry once, sealing afresh; a second refusal raises `GatewayRefused`.

Key lists are only as trustworthy as where they come from: pass `key_check` to pin them (e.g.
`VerificationReport.key_check()` from a verified descriptor; `veil.client.session` does this).

Every response carries, in `response.extensions[REQUEST_DIGEST_EXTENSION]`, the sha256 of the
encapsulated request body actually sent (the last attempt's): the digest the node's receipt
must name (`veil.identity.request_digest`).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass

import httpx

from veil.attest.errors import KeyConfigError
from veil.client.errors import (
    GatewayRefused,
    RelayBroke,
    RelayRefused,
    RequestNotSendable,
    ResponseRefused,
    TruncatedResponse,
)
from veil.wire import bhttp
from veil.wire.boundedjson import check_depth
from veil.wire.errors import (
    OHTTP_KEY_PROBLEM,
    PROBLEM_PREFIX,
    Truncated,
    UnsupportedSuite,
    WireError,
)
from veil.wire.http import REQUEST_DIGEST_EXTENSION
from veil.wire.ohttp import (
    KEYS_PATH,
    MEDIA_CHUNKED_REQUEST,
    MEDIA_CHUNKED_RESPONSE,
    MEDIA_KEYS,
    MEDIA_REQUEST,
    MEDIA_RESPONSE,
    ChunkedResponseOpener,
    KeyConfig,
    ResponseOpener,
    SymmetricSuite,
    decode_key_configs,
    encapsulate_chunked_request,
    encapsulate_request,
)
from veil.wire.padding import pad_to_bucket
from veil.wire.problem import RELAY_PROBLEM_PREFIX, parse_problem

__all__ = [
    "DEFAULT_FORWARDED_HEADERS",
    "REQUEST_DIGEST_EXTENSION",
    "AsyncOhttpTransport",
    "OhttpTransport",
    "node_keys_url",
    "relay_keys_url",
    "relay_url_for",
]

# Request headers sealed into the message; everything else (user-agent, x-stainless-* SDK
# fingerprints, authorization, cookies) is dropped so the node learns nothing about the client.
DEFAULT_FORWARDED_HEADERS = frozenset({"content-type", "accept"})
_FORWARDED_PREFIX = "x-veil-"
_MAX_KEYS_BYTES = 64 * 1024
_MAX_PLAIN_RESPONSE = 16 * 1024 * 1024
_MAX_PROBLEM_BYTES = 64 * 1024  # a problem body is a few hundred bytes


def relay_url_for(relay_url: str, node_id: str) -> str:
    """Where the relay takes encapsulated requests for `node_id`."""
    return f"{relay_url.rstrip('/')}/relay/{node_id}"


def relay_keys_url(relay_url: str, node_id: str) -> str:
    """The node's key list fetched through the relay (the node does not see who fetches)."""
    return relay_url_for(relay_url, node_id) + "/ohttp-keys"


def node_keys_url(node_url: str) -> str:
    """The node's key list fetched from the node itself (the node sees the fetcher's address)."""
    return node_url.rstrip("/") + KEYS_PATH


@dataclass(frozen=True)
class _Plan:
    """What both transports share: how to seal and where to send."""

    endpoint: str
    keys_url: str | None
    chunked: bool
    suite: SymmetricSuite | None
    forwarded: frozenset[str]
    key_check: Callable[[tuple[KeyConfig, ...]], None] | None


def _bhttp_request(request: httpx.Request, body: bytes, forwarded: frozenset[str]) -> bytes:
    headers = tuple(
        (name.lower().encode(), value.encode("latin-1"))
        for name, value in request.headers.items()
        if name.lower() in forwarded or name.lower().startswith(_FORWARDED_PREFIX)
    )
    message = bhttp.Request(
        method=request.method,
        scheme=request.url.scheme,
        authority=request.url.netloc.decode("ascii"),
        path=request.url.raw_path.decode("ascii"),
        headers=headers,
        content=body,
    )
    try:  # padded to a size bucket: the sealed length says only the bucket
        return pad_to_bucket(bhttp.encode_request(message))
    except ValueError as err:
        raise RequestNotSendable(f"request cannot be encoded as binary HTTP: {err}") from None


def _accept_keys(plan: _Plan, response: httpx.Response) -> tuple[KeyConfig, ...]:
    if response.status_code != 200:
        raise KeyConfigError(f"key list fetch answered HTTP {response.status_code}")
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != MEDIA_KEYS:
        raise KeyConfigError(f"key list has media type {media!r}, not {MEDIA_KEYS}")
    if len(response.content) > _MAX_KEYS_BYTES:
        raise KeyConfigError("key list too large")
    try:
        configs = decode_key_configs(response.content)
    except WireError as err:
        raise KeyConfigError(f"key list refused: {err}") from None
    if plan.key_check is not None:
        plan.key_check(configs)  # raises to refuse
    return configs


def _seal(
    plan: _Plan, config: KeyConfig, message: bytes
) -> tuple[bytes, ResponseOpener | ChunkedResponseOpener]:
    try:
        if plan.chunked:
            return encapsulate_chunked_request(config, message, suite=plan.suite)
        return encapsulate_request(config, message, suite=plan.suite)
    except WireError as err:
        raise KeyConfigError(f"cannot seal to key {config.key_id}: {err}") from None


def _outer_request(plan: _Plan, sealed: bytes) -> httpx.Request:
    media = MEDIA_CHUNKED_REQUEST if plan.chunked else MEDIA_REQUEST
    request = httpx.Request("POST", plan.endpoint, content=sealed, headers={"content-type": media})
    # Only content type (and framing) go out: no user-agent, accept or encoding hints.
    for name in ("user-agent", "accept", "accept-encoding"):
        request.headers.pop(name, None)
    return request


def _keys_request(plan: _Plan) -> httpx.Request:
    """A bare GET: built directly so no client default header (user-agent...) is added."""
    assert plan.keys_url is not None
    return httpx.Request("GET", plan.keys_url, headers={"accept": MEDIA_KEYS})


def _refusal(status: int, body: bytes) -> tuple[Exception, bool]:
    """(error to raise, whether a key refetch may help) for a non-success outer answer. A
    body too large or too deep to be a problem is read as none (never given to the recursive
    decoder: the relay, or what answers in its place, is not trusted with the client's stack)."""
    problem_type, detail = "", ""
    if len(body) <= _MAX_PROBLEM_BYTES and check_depth(body):
        problem_type, detail = parse_problem(body)
    detail = detail or f"HTTP {status}"
    if problem_type.startswith(RELAY_PROBLEM_PREFIX) or not problem_type:
        return RelayRefused(
            f"relay refused: {detail}", status=status, problem_type=problem_type
        ), False
    retry = problem_type in (OHTTP_KEY_PROBLEM, PROBLEM_PREFIX + UnsupportedSuite.code)
    err = GatewayRefused(f"gateway refused: {detail}", status=status, problem_type=problem_type)
    return err, retry


def _expected_media(plan: _Plan, response: httpx.Response) -> bool:
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return media == (MEDIA_CHUNKED_RESPONSE if plan.chunked else MEDIA_RESPONSE)


def _httpx_response(head: bhttp.ResponseHead | bhttp.Response, **kwargs: object) -> httpx.Response:
    headers = [
        (n, v) for n, v in head.headers if n not in (b"content-length", b"transfer-encoding")
    ]
    return httpx.Response(head.status, headers=headers, **kwargs)  # type: ignore[arg-type]


def _with_digest(response: httpx.Response, sealed: bytes) -> httpx.Response:
    response.extensions[REQUEST_DIGEST_EXTENSION] = hashlib.sha256(sealed).digest()
    return response


def _open_whole(opener: ResponseOpener, data: bytes) -> bhttp.Response:
    try:
        return bhttp.decode_response(opener.open(data))
    except WireError as err:
        raise ResponseRefused(f"answer refused: {err.code}") from None


class _StreamDecoder:
    """Opens a chunked answer incrementally: sealed bytes in, BHTTP events out."""

    def __init__(self, opener: ChunkedResponseOpener) -> None:
        self._opener = opener
        self._parser = bhttp.MessageParser("response")

    def feed(self, raw: bytes) -> list[bhttp.Event]:
        try:
            return [e for piece in self._opener.feed(raw) for e in self._parser.feed(piece)]
        except WireError as err:
            raise ResponseRefused(f"answer refused: {err.code}") from None

    def close(self) -> list[bhttp.Event]:
        try:
            events = self._parser.feed(self._opener.close())
            events += self._parser.close()
        except Truncated:
            raise TruncatedResponse("answer ended before its final chunk") from None
        except WireError as err:
            raise ResponseRefused(f"answer refused: {err.code}") from None
        if not self._parser.done:  # pragma: no cover - close() either ends or raises
            raise TruncatedResponse("answer ended early")
        return events

    @staticmethod
    def split(events: list[bhttp.Event]) -> tuple[bhttp.ResponseHead | None, list[bytes]]:
        head = next((e for e in events if isinstance(e, bhttp.ResponseHead)), None)
        return head, [e.data for e in events if isinstance(e, bhttp.Content)]


def _plan(
    relay_url: str,
    node_id: str,
    keys_url: str | None,
    key_configs: Sequence[KeyConfig] | None,
    chunked: bool,
    suite: SymmetricSuite | None,
    forward_headers: frozenset[str] | None,
    key_check: Callable[[tuple[KeyConfig, ...]], None] | None,
) -> _Plan:
    if keys_url is None and not key_configs:
        raise KeyConfigError("give keys_url or key_configs")
    return _Plan(
        endpoint=relay_url_for(relay_url, node_id),
        keys_url=keys_url,
        chunked=chunked,
        suite=suite,
        forwarded=forward_headers or DEFAULT_FORWARDED_HEADERS,
        key_check=key_check,
    )


class OhttpTransport(httpx.BaseTransport):
    """Sync transport: seals each request to the node, sends it via the relay, opens the answer.

    `outer` is the transport that reaches the relay (default: plain `httpx.HTTPTransport`).
    """

    def __init__(
        self,
        relay_url: str,
        node_id: str,
        *,
        keys_url: str | None = None,
        key_configs: Sequence[KeyConfig] | None = None,
        chunked: bool = True,
        suite: SymmetricSuite | None = None,
        forward_headers: frozenset[str] | None = None,
        key_check: Callable[[tuple[KeyConfig, ...]], None] | None = None,
        timeout: httpx.Timeout | float = httpx.Timeout(120.0, connect=5.0),
        outer: httpx.BaseTransport | None = None,
    ) -> None:
        self._plan = _plan(
            relay_url, node_id, keys_url, key_configs, chunked, suite, forward_headers, key_check
        )
        self._configs = tuple(key_configs or ())
        self._http = httpx.Client(
            transport=outer or httpx.HTTPTransport(), timeout=timeout, follow_redirects=False
        )

    def refresh_keys(self) -> tuple[KeyConfig, ...]:
        """Fetch and check the key list now."""
        if self._plan.keys_url is None:
            raise KeyConfigError("no keys_url to refetch from")
        try:
            response = self._http.send(_keys_request(self._plan))
        except httpx.HTTPError as err:
            raise KeyConfigError(f"key list fetch failed: {type(err).__name__}") from None
        self._configs = _accept_keys(self._plan, response)
        return self._configs

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        message = _bhttp_request(request, request.read(), self._plan.forwarded)
        if not self._configs:
            self.refresh_keys()
        for attempt in range(2):
            sealed, opener = _seal(self._plan, self._configs[0], message)
            outer = self._http.send(_outer_request(self._plan, sealed), stream=True)
            if outer.status_code == 200 and _expected_media(self._plan, outer):
                return _with_digest(self._open(outer, opener), sealed)
            try:
                body = outer.read()
            finally:
                outer.close()
            if outer.status_code == 200:
                raise ResponseRefused("answer has the wrong media type")
            err, retry = _refusal(outer.status_code, body)
            if retry and attempt == 0 and self._plan.keys_url is not None:
                self.refresh_keys()
                continue
            raise err
        raise AssertionError("unreachable")  # pragma: no cover

    def _open(
        self, outer: httpx.Response, opener: ResponseOpener | ChunkedResponseOpener
    ) -> httpx.Response:
        if isinstance(opener, ResponseOpener):
            try:
                data = _read_capped(outer.iter_bytes(), _MAX_PLAIN_RESPONSE)
            finally:
                outer.close()
            whole = _open_whole(opener, data)
            return _httpx_response(whole, content=whole.content)
        decoder = _StreamDecoder(opener)
        raw = outer.iter_bytes()
        pending: list[bytes] = []
        try:
            for piece in raw:
                head, content = decoder.split(decoder.feed(piece))
                pending += content
                if head is not None:
                    return _httpx_response(head, stream=_SyncStream(outer, raw, decoder, pending))
            head, content = decoder.split(decoder.close())
        except httpx.HTTPError:
            outer.close()
            raise RelayBroke("the relay connection broke before the answer's head") from None
        except BaseException:
            outer.close()
            raise
        outer.close()
        if head is None:
            raise ResponseRefused("answer has no response head")
        return _httpx_response(head, content=b"".join(pending + content))

    def close(self) -> None:
        self._http.close()


def _read_capped(pieces: Iterator[bytes], cap: int) -> bytes:
    data = bytearray()
    try:
        for piece in pieces:
            data += piece
            if len(data) > cap:
                raise ResponseRefused("answer too large")
    except httpx.HTTPError:
        raise RelayBroke("the relay connection broke during the answer") from None
    return bytes(data)


class _SyncStream(httpx.SyncByteStream):
    """The opened body of a chunked answer; raises at the end unless the final chunk opened."""

    def __init__(
        self,
        outer: httpx.Response,
        raw: Iterator[bytes],
        decoder: _StreamDecoder,
        pending: list[bytes],
    ) -> None:
        self._outer, self._raw, self._decoder, self._pending = outer, raw, decoder, pending

    def __iter__(self) -> Iterator[bytes]:
        yield from self._pending
        self._pending = []
        try:
            for piece in self._raw:
                yield from self._decoder.split(self._decoder.feed(piece))[1]
        except httpx.HTTPError:
            raise RelayBroke("the relay connection broke during the answer") from None
        yield from self._decoder.split(self._decoder.close())[1]

    def close(self) -> None:
        self._outer.close()


class AsyncOhttpTransport(httpx.AsyncBaseTransport):
    """Async twin of `OhttpTransport`, for `httpx.AsyncClient` / `openai.AsyncOpenAI`."""

    def __init__(
        self,
        relay_url: str,
        node_id: str,
        *,
        keys_url: str | None = None,
        key_configs: Sequence[KeyConfig] | None = None,
        chunked: bool = True,
        suite: SymmetricSuite | None = None,
        forward_headers: frozenset[str] | None = None,
        key_check: Callable[[tuple[KeyConfig, ...]], None] | None = None,
        timeout: httpx.Timeout | float = httpx.Timeout(120.0, connect=5.0),
        outer: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._plan = _plan(
            relay_url, node_id, keys_url, key_configs, chunked, suite, forward_headers, key_check
        )
        self._configs = tuple(key_configs or ())
        self._http = httpx.AsyncClient(
            transport=outer or httpx.AsyncHTTPTransport(), timeout=timeout, follow_redirects=False
        )

    async def refresh_keys(self) -> tuple[KeyConfig, ...]:
        """Fetch and check the key list now."""
        if self._plan.keys_url is None:
            raise KeyConfigError("no keys_url to refetch from")
        try:
            response = await self._http.send(_keys_request(self._plan))
        except httpx.HTTPError as err:
            raise KeyConfigError(f"key list fetch failed: {type(err).__name__}") from None
        self._configs = _accept_keys(self._plan, response)
        return self._configs

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        message = _bhttp_request(request, await request.aread(), self._plan.forwarded)
        if not self._configs:
            await self.refresh_keys()
        for attempt in range(2):
            sealed, opener = _seal(self._plan, self._configs[0], message)
            outer = await self._http.send(_outer_request(self._plan, sealed), stream=True)
            if outer.status_code == 200 and _expected_media(self._plan, outer):
                return _with_digest(await self._open(outer, opener), sealed)
            try:
                body = await outer.aread()
            finally:
                await outer.aclose()
            if outer.status_code == 200:
                raise ResponseRefused("answer has the wrong media type")
            err, retry = _refusal(outer.status_code, body)
            if retry and attempt == 0 and self._plan.keys_url is not None:
                await self.refresh_keys()
                continue
            raise err
        raise AssertionError("unreachable")  # pragma: no cover

    async def _open(
        self, outer: httpx.Response, opener: ResponseOpener | ChunkedResponseOpener
    ) -> httpx.Response:
        if isinstance(opener, ResponseOpener):
            data = bytearray()
            try:
                async for piece in outer.aiter_bytes():
                    data += piece
                    if len(data) > _MAX_PLAIN_RESPONSE:
                        raise ResponseRefused("answer too large")
            except httpx.HTTPError:
                raise RelayBroke("the relay connection broke during the answer") from None
            finally:
                await outer.aclose()
            whole = _open_whole(opener, bytes(data))
            return _httpx_response(whole, content=whole.content)
        decoder = _StreamDecoder(opener)
        raw = outer.aiter_bytes()
        pending: list[bytes] = []
        try:
            async for piece in raw:
                head, content = decoder.split(decoder.feed(piece))
                pending += content
                if head is not None:
                    return _httpx_response(head, stream=_AsyncStream(outer, raw, decoder, pending))
            head, content = decoder.split(decoder.close())
        except httpx.HTTPError:
            await outer.aclose()
            raise RelayBroke("the relay connection broke before the answer's head") from None
        except BaseException:
            await outer.aclose()
            raise
        await outer.aclose()
        if head is None:
            raise ResponseRefused("answer has no response head")
        return _httpx_response(head, content=b"".join(pending + content))

    async def aclose(self) -> None:
        await self._http.aclose()


class _AsyncStream(httpx.AsyncByteStream):
    def __init__(
        self,
        outer: httpx.Response,
        raw: AsyncIterator[bytes],
        decoder: _StreamDecoder,
        pending: list[bytes],
    ) -> None:
        self._outer, self._raw, self._decoder, self._pending = outer, raw, decoder, pending

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pending:
            yield piece
        self._pending = []
        try:
            async for piece in self._raw:
                for data in self._decoder.split(self._decoder.feed(piece))[1]:
                    yield data
        except httpx.HTTPError:
            raise RelayBroke("the relay connection broke during the answer") from None
        for data in self._decoder.split(self._decoder.close())[1]:
            yield data

    async def aclose(self) -> None:
        await self._outer.aclose()
