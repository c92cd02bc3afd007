"""The MPC client: embeds locally, secret-shares hidden states to the parties, reconstructs the
last hidden state and samples locally. Token ids, prompt and answer never leave this process.

`RemoteSession` talks to party processes; `veil.mpc.local` has a plaintext and an in-process
simulated session with the same interface, so `generate` runs unchanged on all three.
"""

from __future__ import annotations

import logging
import secrets
import select
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from veil.mpc.channel import recv_frame, send_frame, share_blobs, shares_from
from veil.mpc.errors import (
    MpcConfigError,
    MpcError,
    PartyFailure,
    SessionError,
    error_from_code,
)
from veil.mpc.head import ClientHead
from veil.mpc.model import BUCKET
from veil.mpc.runtime import MpcSettings, ShareCodec

__all__ = [
    "LayerSession",
    "RemoteSession",
    "StepStats",
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


class RemoteSession:
    """A session across party processes, each reached over its own control connection."""

    def __init__(
        self,
        parties: Sequence[str],
        settings: MpcSettings,
        weights_sha256: str,
        timeout_s: float = 600.0,
        session_id: str | None = None,
    ) -> None:
        if len(parties) != settings.world_size:
            raise MpcConfigError(
                f"{settings.protocol} needs {settings.world_size} parties, got {len(parties)}"
            )
        self.settings = settings
        self.codec = ShareCodec(settings)
        self.session_id = session_id or secrets.token_hex(16)
        self.parties = list(parties)
        self.stats: list[StepStats] = []
        self._socks: list[socket.socket] = []
        self._timeout = timeout_s
        self._open = False
        try:
            for addr in self.parties:
                s = socket.create_connection(_parse_addr(addr), timeout=timeout_s)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._socks.append(s)
            hellos = self._all([({"op": "hello"}, [])] * len(self._socks))
            links = [h["link"] for h, _ in hellos]
            for (h, _), addr in zip(hellos, self.parties, strict=True):
                if h["settings"] != settings.to_dict():
                    raise MpcConfigError(
                        f"party {addr} runs {h['settings']}, not {settings.to_dict()}"
                    )
                if h["weights_sha256"] != weights_sha256:
                    raise MpcConfigError(
                        f"party {addr} serves other weights ({h['weights_sha256'][:12]})"
                    )
            if len(set(links)) != len(links):
                raise MpcConfigError("two of the chosen parties are the same party")
            base = {
                "op": "open",
                "session": self.session_id,
                "links": links,
                "settings": settings.to_dict(),
            }
            self._all([(dict(base, rank=r), []) for r in range(len(links))])
            self._open = True
        except BaseException:
            self.close()
            raise

    def _all(
        self, requests: list[tuple[dict[str, Any], list[bytes]]]
    ) -> list[tuple[dict[str, Any], list[bytes]]]:
        """Send one request to each party, then collect all replies, failing fast on a dead one."""
        for i, (sock, (header, blobs)) in enumerate(zip(self._socks, requests, strict=True)):
            try:
                send_frame(sock, header, blobs)
            except OSError as exc:
                raise PartyFailure(f"party {i} ({self.parties[i]}) is unreachable: {exc}") from exc
        replies: dict[int, tuple[dict[str, Any], list[bytes]]] = {}
        deadline = time.monotonic() + self._timeout
        while len(replies) < len(self._socks):
            waiting = [s for i, s in enumerate(self._socks) if i not in replies]
            ready, _, _ = select.select(waiting, [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise PartyFailure(f"no reply from parties within {self._timeout:.0f} s")
            for s in ready:
                i = self._socks.index(s)
                try:
                    replies[i] = recv_frame(s)
                except (OSError, ConnectionError) as exc:
                    raise PartyFailure(f"party {i} ({self.parties[i]}) died: {exc}") from exc
        errors = [(i, h) for i, (h, _) in sorted(replies.items()) if not h.get("ok")]
        if errors:
            # a party that failed the run reports it; the others' reports are about the same cause
            i, h = next(((i, h) for i, h in errors if h.get("error") == "party_failure"), errors[0])
            raise error_from_code(str(h.get("error")), f"party {i}: {h.get('message')}")
        return [replies[i] for i in range(len(self._socks))]

    def _run(self, op: str, arrays: list[np.ndarray]) -> np.ndarray:
        if not self._open:
            raise PartyFailure("session is closed")
        t0 = time.perf_counter()
        per_party: list[list[Any]] = [[] for _ in self._socks]
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
        """Ask every reachable party to wipe the session, then drop the connections (a party
        also wipes a session whose connection drops). `wait` waits for each acknowledgement."""
        if self._open:
            self._open = False
            for sock in self._socks:
                try:
                    send_frame(sock, {"op": "close", "session": self.session_id})
                    if wait:
                        sock.settimeout(5.0)
                        recv_frame(sock)
                except (OSError, ConnectionError, MpcError):
                    pass
        for sock in self._socks:
            sock.close()
        self._socks = []

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
