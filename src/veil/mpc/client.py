"""The MPC client: embeds locally, secret-shares hidden states to the parties, reconstructs the
last hidden state and samples locally. Token ids, prompt and answer never leave this process.

`RemoteSession` talks to the parties, each through its own `PartyChannel`: `TcpChannel` for a
`veil mpc party` control port (loopback, tests), `HttpChannel` for a node's `POST /v1/mpc`
through any `httpx.Client`. In the network that client carries an OHTTP transport sealed to
the node's key (`veil.client.mpc.mpc_parties` builds them), so the relay and the other nodes
see only ciphertext: never all three shares. `veil.mpc.local` has a plaintext and an in-process
simulated session with the same interface, so `generate` runs unchanged on all of them.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import httpx
import numpy as np

from veil.mpc.channel import (
    MEDIA_MPC,
    MPC_PATH,
    decode_frame,
    encode_frame,
    recv_frame,
    send_frame,
    share_blobs,
    shares_from,
)
from veil.mpc.errors import (
    LinkFailure,
    MpcConfigError,
    MpcError,
    PartyFailure,
    PartyUnavailable,
    ProtocolViolation,
    SessionError,
    error_from_code,
)
from veil.mpc.head import ClientHead
from veil.mpc.model import BUCKET
from veil.mpc.runtime import MpcConfig, ShareCodec
from veil.wire import boundedjson
from veil.wire.errors import WireError

__all__ = [
    "HttpChannel",
    "LayerSession",
    "PartyChannel",
    "PartySpec",
    "RemoteSession",
    "StepStats",
    "TcpChannel",
    "generate",
    "greedy",
    "prefill_prompt",
]

log = logging.getLogger(__name__)


class LayerSession(Protocol):
    """The transformer layers as a stateful service over hidden states (KV cache inside)."""

    def prefill(self, hidden: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """First BUCKET prompt rows [BUCKET, D], left-padded (valid 0/1 [BUCKET]) -> last [D]."""
        ...

    def step(self, hidden: np.ndarray) -> np.ndarray:
        """BUCKET more prompt rows or one generated token's row [n, D] -> last hidden [D]."""
        ...

    def close(self) -> None: ...


def greedy(logits: np.ndarray) -> int:
    return int(np.argmax(logits))


def prefill_prompt(
    session: LayerSession, head: ClientHead, ids: Sequence[int], pad_id: int = 0
) -> np.ndarray:
    """Run a prompt through the layers in BUCKET chunks; returns the next-token logits.

    The prompt is left-padded to a multiple of BUCKET and which rows are padding is itself
    secret-shared, so a party learns the prompt length only to the bucket.
    """
    if not ids:
        raise MpcConfigError("empty prompt")
    padded = -(-len(ids) // BUCKET) * BUCKET
    n_pad = padded - len(ids)
    rows = head.embed([pad_id] * n_pad + list(ids), padded)
    valid = np.concatenate([np.zeros(n_pad, np.float32), np.ones(BUCKET - n_pad, np.float32)])
    last = session.prefill(rows[:BUCKET], valid)
    for i in range(BUCKET, padded, BUCKET):
        last = session.step(rows[i : i + BUCKET])
    return head.logits(last)


def generate(
    session: LayerSession,
    head: ClientHead,
    ids: Sequence[int],
    max_tokens: int,
    pick: Callable[[np.ndarray], int] = greedy,
    stop_ids: frozenset[int] = frozenset(),
) -> Iterator[int]:
    """Yield generated token ids (the stop token included, then it ends)."""
    logits = prefill_prompt(session, head, ids)
    for i in range(max_tokens):
        token = pick(logits)
        yield token
        if token in stop_ids or i + 1 == max_tokens:
            return
        logits = head.logits(session.step(head.embed([token], 1)))


@dataclass
class StepStats:
    """What one prefill/step cost, as the parties report it."""

    op: str
    seconds: float  # client wall time, shares made to shares reconstructed
    party_seconds: list[float] = field(default_factory=list)
    party_written: list[int] = field(default_factory=list)  # bytes each party wrote (syscalls)
    party_read: list[int] = field(default_factory=list)
    sent_to_party: list[int] = field(default_factory=list)  # control-channel bytes we sent


def _parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise MpcConfigError(f"party address {addr!r} is not host:port")
    return host, int(port)


Frame: TypeAlias = tuple[dict[str, Any], list[bytes]]


class PartyChannel(Protocol):
    """How the client reaches one party: one frame out, one frame back.

    `call` raises `PartyFailure` when the party cannot be reached or its answer is not a
    frame; a frame that reports an error is returned as is (the session decides)."""

    name: str  # for messages: an address or a node id

    def call(self, header: dict[str, Any], blobs: Sequence[bytes]) -> Frame: ...

    def end(self, header: dict[str, Any], wait: bool) -> None:
        """Best effort: send the session's close; `wait` for its answer. Never raises."""
        ...

    def close(self) -> None: ...


class TcpChannel:
    """A `veil mpc party` control port: a frame stream on one TCP connection (plaintext)."""

    def __init__(self, addr: str, timeout_s: float = 600.0) -> None:
        self.name = addr
        try:
            self._sock = socket.create_connection(_parse_addr(addr), timeout=timeout_s)
        except OSError as exc:
            raise PartyFailure(f"party {addr} is unreachable: {exc}") from exc
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._lock = threading.Lock()  # one request in flight: replies come back in order

    def call(self, header: dict[str, Any], blobs: Sequence[bytes]) -> Frame:
        with self._lock:
            try:
                send_frame(self._sock, header, blobs)
                return recv_frame(self._sock)
            except (OSError, ConnectionError) as exc:
                raise PartyFailure(f"died: {exc}") from exc

    def end(self, header: dict[str, Any], wait: bool) -> None:
        try:
            if not wait:  # closing the connection right after also ends the session there
                send_frame(self._sock, header)
                return
            self._sock.settimeout(5.0)
            self.call(header, [])
        except (OSError, MpcError):
            pass

    def close(self) -> None:
        self._sock.close()


class HttpChannel:
    """A node that hosts a party: each frame is one `POST /v1/mpc` through `http`.

    `http` decides the path: in the network an `httpx.Client` over `OhttpTransport`, so the
    frame is sealed to that node's key and the relay forwards ciphertext. The channel owns
    `http` and closes it.
    """

    def __init__(
        self,
        http: httpx.Client,
        name: str = "party",
        *,
        url: str = "http://node.veil.invalid" + MPC_PATH,  # the host is never contacted
        timeout_s: float = 600.0,
    ) -> None:
        self.name = name
        self._http = http
        self._url = url
        self._timeout = timeout_s

    def call(self, header: dict[str, Any], blobs: Sequence[bytes]) -> Frame:
        try:
            response = self._http.post(
                self._url,
                content=encode_frame(header, blobs),
                headers={"content-type": MEDIA_MPC, "accept": MEDIA_MPC},
                timeout=self._timeout,
            )
        except MpcError:
            raise
        except Exception as exc:  # httpx errors, and the OHTTP transport's refusals
            if getattr(exc, "status", None) == 413:  # the relay's or the gateway's size limit
                raise ProtocolViolation(f"party {self.name}: request too large") from exc
            raise PartyFailure(f"is unreachable: {type(exc).__name__}: {exc}") from exc
        media = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if media == MEDIA_MPC:
            try:
                return decode_frame(response.content)
            except ProtocolViolation as exc:
                raise PartyFailure(f"answered a broken frame: {exc}") from exc
        raise _http_error(self.name, response)

    def end(self, header: dict[str, Any], wait: bool) -> None:
        # HTTP cannot send without waiting: `wait` only matters to the caller's thread
        with contextlib.suppress(MpcError):
            self.call(header, [])

    def close(self) -> None:
        self._http.close()


def _http_error(name: str, response: httpx.Response) -> MpcError:
    """A typed error for an answer that is not a frame (an OpenAI-style error, or a problem)."""
    code = ""
    try:
        body = boundedjson.loads(response.content, max_bytes=64 * 1024, what="error body")
        error = body.get("error") if isinstance(body, dict) else None
        code = str(error.get("code") or "") if isinstance(error, dict) else ""
    except WireError:
        pass
    status = response.status_code
    if code == PartyUnavailable.code:
        return PartyUnavailable(f"node {name} hosts no MPC party")
    if status == 413:
        return ProtocolViolation(f"party {name}: request too large")
    return PartyFailure(f"answered HTTP {status} {code}".rstrip())


# What `RemoteSession` takes per party: a `veil mpc party` control address ("host:port"),
# (name, httpx.Client) for a node's MPC route, or a ready channel.
PartySpec: TypeAlias = "str | tuple[str, httpx.Client] | PartyChannel"


def _channel(spec: Any, timeout_s: float) -> PartyChannel:
    if isinstance(spec, str):
        return TcpChannel(spec, timeout_s)
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], httpx.Client):
        return HttpChannel(spec[1], str(spec[0]), timeout_s=timeout_s)
    if all(hasattr(spec, a) for a in ("name", "call", "end", "close")):
        return spec
    raise MpcConfigError(f"a party is an address, (name, httpx.Client) or a channel, not {spec!r}")


# error codes that end the session at once: the other parties are stuck in the same open or run
_FATAL = frozenset({PartyFailure.code, LinkFailure.code})


class RemoteSession:
    """A session across three (or two) parties, each reached through its own channel.

    Requests to the parties go out in parallel (one thread each); the first party that cannot
    be reached, or that reports a failed link or run, fails the call at once. Each party gets
    its own random token at `open` and every later request carries it, so only this client can
    drive the session. At `open` each party also gets the three link certificates the parties
    stated in `hello`, so the parties link (mutual TLS) only with each other; a party that
    states none is refused (no plaintext links). The session owns
    its channels: `close` ends the session on every party (they wipe their shares and KV
    cache) and closes the channels.
    """

    def __init__(
        self,
        parties: Sequence[PartySpec],
        settings: MpcConfig,
        weights_sha256: str,
        timeout_s: float = 600.0,
        session_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.codec = ShareCodec(settings)
        self.session_id = session_id or secrets.token_hex(16)
        self.stats: list[StepStats] = []
        self._timeout = timeout_s
        self._open = False
        self._channels: list[PartyChannel] = []
        try:
            if len(parties) != settings.world_size:
                raise MpcConfigError(
                    f"{settings.protocol} needs {settings.world_size} parties, got {len(parties)}"
                )
            for spec in parties:
                self._channels.append(_channel(spec, timeout_s))
        except BaseException:
            for channel in self._channels:
                channel.close()
            self._close_channels(parties[len(self._channels) :])
            raise
        self.parties = [c.name for c in self._channels]
        self._tokens = [secrets.token_hex(16) for _ in self._channels]
        try:
            hellos = self._all([({"op": "hello"}, [])] * len(self._channels))
            links = [h.get("link") for h, _ in hellos]
            certs = [h.get("cert") for h, _ in hellos]
            for (h, _), name in zip(hellos, self.parties, strict=True):
                if not isinstance(h.get("cert"), str):  # never fall back to plaintext links
                    raise MpcConfigError(f"party {name} states no link certificate (mutual TLS)")
                if h["settings"] != settings.to_dict():
                    raise MpcConfigError(
                        f"party {name} runs {h['settings']}, not {settings.to_dict()}"
                    )
                if h["weights_sha256"] != weights_sha256:
                    raise MpcConfigError(
                        f"party {name} serves other weights ({h['weights_sha256'][:12]})"
                    )
            if len(set(links)) != len(links) or len(set(certs)) != len(certs):
                raise MpcConfigError("two of the chosen parties are the same party")
            # each party links only with the holders of the other two certificates (mutual
            # TLS); over a node's route the hellos came sealed to each verified node key
            base = {
                "op": "open",
                "session": self.session_id,
                "links": links,
                "certs": certs,
                "settings": settings.to_dict(),
            }
            self._open = True  # from here on, a failure must close what did open
            self._all([(dict(base, rank=r), []) for r in range(len(links))])
        except BaseException:
            self.close(wait=False)
            raise

    @staticmethod
    def _close_channels(specs: Sequence[Any]) -> None:
        """Close what was handed over when the session cannot even start (it owns them)."""
        for spec in specs:
            closer = spec[1] if isinstance(spec, tuple) and len(spec) == 2 else spec
            if not isinstance(closer, str) and hasattr(closer, "close"):
                with contextlib.suppress(Exception):
                    closer.close()

    def _all(self, requests: list[Frame]) -> list[Frame]:
        """Send one request to each party in parallel and collect the replies, failing fast
        when a party cannot be reached or reports a failed link or run (the others are then
        stuck until the session is closed); error replies raise their typed error."""
        done: queue.Queue[tuple[int, Frame | BaseException]] = queue.Queue()

        def one(i: int, header: dict[str, Any], blobs: list[bytes]) -> None:
            channel = self._channels[i]
            try:
                done.put((i, channel.call(header, blobs)))
            except PartyFailure as exc:
                done.put((i, PartyFailure(f"party {i} ({channel.name}) {exc}")))
            except BaseException as exc:
                done.put((i, exc))

        for i, (header, blobs) in enumerate(requests):
            if header.get("op") != "hello":
                header = dict(header, token=self._tokens[i])
            threading.Thread(
                target=one, args=(i, header, list(blobs)), daemon=True, name=f"mpc-party-{i}"
            ).start()
        replies: dict[int, Frame] = {}
        deadline = time.monotonic() + self._timeout
        while len(replies) < len(requests):
            try:
                i, got = done.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise PartyFailure(f"no reply from parties within {self._timeout:.0f} s") from None
            if isinstance(got, BaseException):
                raise got
            replies[i] = got
            if got[0].get("error") in _FATAL:
                break
        errors = [(i, h) for i, (h, _) in sorted(replies.items()) if not h.get("ok")]
        if errors:
            # a party that failed the run reports it; the others' reports are about the same cause
            i, h = next(((i, h) for i, h in errors if h.get("error") in _FATAL), errors[0])
            name = self._channels[i].name if i < len(self._channels) else "?"
            raise error_from_code(str(h.get("error")), f"party {i} ({name}): {h.get('message')}")
        return [replies[i] for i in range(len(requests))]

    def _run(self, op: str, arrays: list[np.ndarray]) -> np.ndarray:
        if not self._open:
            raise PartyFailure("session is closed")
        t0 = time.perf_counter()
        per_party: list[list[Any]] = [[] for _ in self._channels]
        for a in arrays:
            for r, share in enumerate(self.codec.secret(a)):
                per_party[r].append(share)
        requests = []
        for shares in per_party:
            counts, blobs = share_blobs(shares)
            requests.append(({"op": op, "session": self.session_id, "shares": counts}, blobs))
        try:
            replies = self._all(requests)
        except (PartyFailure, SessionError):  # the session is gone; a refused share is not fatal
            self.close(wait=False)  # survivors may be stuck in the run until their link times out
            raise
        out = self.codec.reconstruct([shares_from(h.get("shares"), b)[0] for h, b in replies])
        stats = [h.get("stats", {}) for h, _ in replies]
        self.stats.append(
            StepStats(
                op,
                time.perf_counter() - t0,
                [float(s.get("seconds", 0.0)) for s in stats],
                [int(s.get("written", 0)) for s in stats],
                [int(s.get("read", 0)) for s in stats],
                [sum(len(b) for b in blobs) for _, blobs in requests],
            )
        )
        return np.asarray(out, np.float32).reshape(-1)

    def prefill(self, hidden: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return self._run("prefill", [hidden, valid])

    def step(self, hidden: np.ndarray) -> np.ndarray:
        return self._run("step", [hidden])

    def close(self, wait: bool = True) -> None:
        """End the session on every party (each wipes its shares and KV cache), then close the
        channels. `wait` waits (10 s at most) for the parties' acknowledgements; without it the
        closes go out in the background (a party still in a run answers when the run ends)."""
        channels, self._channels = self._channels, []
        if not self._open:
            for channel in channels:
                channel.close()
            return
        self._open = False
        threads = []
        for i, channel in enumerate(channels):
            header = {"op": "close", "session": self.session_id, "token": self._tokens[i]}
            t = threading.Thread(
                target=_end_and_close, args=(channel, header, wait), daemon=True, name="mpc-close"
            )
            t.start()
            threads.append(t)
        if wait:
            deadline = time.monotonic() + 10.0
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _end_and_close(channel: PartyChannel, header: dict[str, Any], wait: bool) -> None:
    try:
        channel.end(header, wait)
    finally:
        channel.close()
