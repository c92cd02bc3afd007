"""An MPC party: serves sessions for clients, computing on secret shares with two peer parties.

Each party has two addresses: a control address where clients send shares and get shares back
(the `channel` framing), and a link address where SPU connects it to its peers for the protocol
itself. The control address is either a plain TCP port (`serve`, as `veil mpc party` runs it) or
a node's `POST /v1/mpc` route (`handle`, as `veil node serve --mpc-link` runs it), which clients
reach inside Oblivious HTTP through the relay.

A client opens a session by telling each of its three chosen parties the session id, the party's
rank, all three link addresses and a token for that party alone; the parties then build an SPU
link for that session, check each other's settings and model digest over it, and keep the
secret KV cache between steps. The session id is known to all three parties (it names the link);
the token is not, so only the client can run, step or close the session on a party (a party
that knows the id cannot drive its peers and collect their output shares).

A session ends, and its state is wiped, when the client closes it, when it idles past the
timeout, or when a run fails; over a TCP control connection, also when that connection closes.

One session at a time per party: SPU runs are collective, so sessions interleaved in different
orders on different parties would deadlock; a second client gets `PartyBusy`.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import socket
import socketserver
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from veil.mpc.channel import recv_frame, send_frame, share_blobs, shares_from
from veil.mpc.errors import (
    MpcConfigError,
    MpcError,
    PartyBusy,
    PartyFailure,
    ProtocolViolation,
    SessionExists,
    SessionExpired,
    UnknownSession,
)
from veil.mpc.model import BUCKET, LayerWeights, LlamaShape
from veil.mpc.runtime import (
    MpcSettings,
    PartyRuntime,
    ShareCodec,
    compile_program,
    public_weight_shares,
)

__all__ = ["PartyConfig", "PartyService", "io_bytes"]

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^[0-9a-f]{16,64}$")  # random hex from the client; also the link id
TOKEN = re.compile(r"^[0-9a-f]{32,64}$")  # random hex from the client, one per party
OPS = frozenset({"hello", "status", "open", "prefill", "step", "close"})
_EXPIRED_KEPT = 1024  # how many expired ids are remembered to answer SessionExpired


@dataclass
class PartyConfig:
    """How one party serves; every duration in seconds unless the name says otherwise."""

    link: str  # host:port this party binds for SPU links to its peers
    settings: MpcSettings = field(default_factory=MpcSettings)
    session_timeout_s: float = 300.0  # an idle session is wiped after this
    link_timeout_ms: int = 60_000  # a peer silent this long mid-run fails the session
    connect_timeout_s: float = 30.0  # peers must join a new session's link within this


def io_bytes() -> tuple[int, int]:
    """(read, written) bytes of this process's read/write-family syscalls, sockets included."""
    try:
        with open("/proc/self/io") as f:
            kv = dict(line.split(": ") for line in f.read().splitlines())
        return int(kv["rchar"]), int(kv["wchar"])
    except (OSError, KeyError, ValueError):
        return 0, 0


@dataclass
class _Session:
    sid: str
    rank: int
    token: str
    runtime: PartyRuntime | None = None
    link: Any = None
    last_used: float = field(default_factory=time.monotonic)
    busy: threading.Lock = field(default_factory=threading.Lock)


class PartyService:
    """The party's state and request handling; `serve()` puts it behind a TCP control port."""

    def __init__(
        self,
        config: PartyConfig,
        shape: LlamaShape,
        weights: LayerWeights,
        weights_sha256: str,
    ) -> None:
        self.config = config
        self.shape = shape
        self.weights_sha256 = weights_sha256
        self.codec = ShareCodec(config.settings)
        # public values encode identically for every rank, so once per process is enough
        self._weights = public_weight_shares(self.codec, weights, 0)
        self._sessions: dict[str, _Session] = {}
        self._expired: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._stop = threading.Event()
        self._reaping: threading.Thread | None = None

    # -- identity ---------------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        return {
            "link": self.config.link,
            "settings": self.config.settings.to_dict(),
            "shape": self.shape.to_dict(),
            "weights_sha256": self.weights_sha256,
        }

    def warm(self) -> None:
        """Compile the programs of the first cache bucket now, so the first session is not slow."""
        for kind, capacity, new in (("prefill", 2 * BUCKET, 0), ("step", 2 * BUCKET, 1),
                                    ("step", 2 * BUCKET, BUCKET), ("grow", 3 * BUCKET, 0),
                                    ("step", 3 * BUCKET, 1)):  # fmt: skip
            compile_program(self.shape, kind, capacity, new)

    def active_sessions(self) -> list[str]:
        with self._lock:
            return sorted(self._sessions)

    # -- session lifecycle ------------------------------------------------------------------
    def open(self, sid: Any, rank: Any, links: Any, settings: Any, token: Any) -> _Session:
        if not isinstance(sid, str) or not SESSION_ID.match(sid):
            raise ProtocolViolation("session id must be 16-64 lowercase hex characters")
        if not isinstance(token, str) or not TOKEN.match(token):
            raise ProtocolViolation("session token must be 32-64 lowercase hex characters")
        world = self.config.settings.world_size
        if settings != self.config.settings.to_dict():
            raise MpcConfigError(
                f"this party runs {self.config.settings.to_dict()}, not {settings}"
            )
        if not isinstance(links, list) or not all(isinstance(x, str) for x in links):
            raise ProtocolViolation("links must be a list of host:port strings")
        if len(links) != world:
            raise MpcConfigError(
                f"{self.config.settings.protocol} needs exactly {world} parties, got {len(links)}"
            )
        if len(set(links)) != len(links):
            raise MpcConfigError("a party appears twice in the session's link list")
        if not isinstance(rank, int) or not 0 <= rank < world or links[rank] != self.config.link:
            raise MpcConfigError(f"rank {rank!r} is not this party ({self.config.link})")
        with self._lock:
            if sid in self._sessions:
                raise SessionExists(f"session {sid} is already open here")
            if sid in self._expired:
                raise SessionExpired(f"session {sid} ended; open a new one")
            if self._sessions:
                raise PartyBusy("this party is serving another session; retry later")
            session = _Session(sid, rank, token)
            session.busy.acquire()  # a close that comes during link setup waits for its end
            self._sessions[sid] = session
        try:
            self._connect(session, links)
        except BaseException:
            self._wipe(session, "link setup failed")
            raise
        finally:
            session.last_used = time.monotonic()
            session.busy.release()
        return session

    def _connect(self, session: _Session, links: list[str]) -> None:
        from spu import libspu

        desc = libspu.link.Desc()
        desc.id = f"veil-{session.sid}"
        for r, addr in enumerate(links):
            desc.add_party(f"p{r}", addr)
        desc.recv_timeout_ms = self.config.link_timeout_ms
        desc.http_timeout_ms = 5_000
        desc.connect_retry_interval_ms = 200
        desc.connect_retry_times = max(1, int(self.config.connect_timeout_s / 0.2))
        try:
            session.link = libspu.link.create_brpc(desc, session.rank)
            theirs = session.link.all_gather(json.dumps(self._handshake(session.sid)))
        except Exception as exc:
            raise PartyFailure(
                f"could not link session {session.sid} with its peers: {exc}"
            ) from exc
        mine = json.dumps(self._handshake(session.sid))
        if any(t != mine for t in theirs):
            raise MpcConfigError("peers disagree on session, settings or model weights")
        try:
            session.runtime = PartyRuntime(
                session.link, self.config.settings, self.shape, self._weights
            )
        except Exception as exc:
            raise PartyFailure(f"SPU runtime setup failed: {exc}") from exc
        log.info("session %s open as rank %d", session.sid, session.rank)

    def _handshake(self, sid: str) -> dict[str, Any]:
        return {"session": sid, **self.hello(), "link": None}

    def _get(self, sid: Any, token: Any) -> _Session:
        """The session, for its client only: a wrong token reads as an unknown session."""
        with self._lock:
            session = self._sessions.get(sid) if isinstance(sid, str) else None
            if session is not None and isinstance(token, str):
                if hmac.compare_digest(session.token.encode(), token.encode()):
                    return session
            elif session is None and isinstance(sid, str) and sid in self._expired:
                raise SessionExpired(f"session {sid} ended (closed, timed out or failed)")
        raise UnknownSession("no such session on this party")

    def _wipe(self, session: _Session, why: str) -> None:
        with self._lock:
            if self._sessions.get(session.sid) is not session:
                return
            del self._sessions[session.sid]
            self._expired[session.sid] = None
            while len(self._expired) > _EXPIRED_KEPT:
                self._expired.popitem(last=False)
        if session.runtime is not None:
            session.runtime.close()
            session.runtime = None
        if session.link is not None:
            try:
                session.link.stop_link()
            except Exception:  # a link whose peer died may refuse to stop cleanly
                log.debug("stop_link failed for %s", session.sid, exc_info=True)
            session.link = None
        log.info("session %s wiped (%s)", session.sid, why)

    def close(self, sid: Any, token: Any) -> None:
        session = self._get(sid, token)
        with session.busy:
            self._wipe(session, "closed by client")

    def reap(self) -> None:
        """Wipe sessions idle past the timeout (those mid-run are not idle)."""
        now = time.monotonic()
        with self._lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            if now - s.last_used > self.config.session_timeout_s and s.busy.acquire(blocking=False):
                try:
                    self._wipe(s, "timed out")
                finally:
                    s.busy.release()

    # -- computation ------------------------------------------------------------------------
    def run(self, sid: Any, token: Any, op: str, shares: list[Any]) -> Any:
        session = self._get(sid, token)
        with session.busy:
            if session.runtime is None:
                raise SessionExpired(f"session {sid} was wiped")
            session.last_used = time.monotonic()
            try:
                if op == "prefill" and len(shares) == 2:
                    out = session.runtime.prefill(shares[0], shares[1])
                elif op == "step" and len(shares) == 1:
                    out = session.runtime.step(shares[0])
                else:
                    raise ProtocolViolation(f"{op} with {len(shares)} shares")
            except PartyFailure as exc:
                self._wipe(session, f"run failed: {exc}")
                raise
            session.last_used = time.monotonic()
            return out

    # -- control channel --------------------------------------------------------------------
    def handle(
        self,
        header: dict[str, Any],
        blobs: list[bytes],
        owned: set[str] | None = None,
        *,
        public: bool = False,
    ) -> tuple[dict[str, Any], list[bytes]]:
        """One request -> one reply; typed errors become {"error": code} replies.

        `owned` collects the sessions a TCP connection opened (wiped when it drops); None
        where there is no connection to tie them to (the node's HTTP route). `public` hides
        `status` (the list of open session ids) from callers who are not the operator.
        """
        op = header.get("op")
        token = header.get("token")
        try:
            if op == "hello":
                return {"ok": True, **self.hello()}, []
            if op == "status" and not public:
                return {"ok": True, "sessions": self.active_sessions()}, []
            if op == "open":
                s = self.open(
                    header.get("session"),
                    header.get("rank"),
                    header.get("links"),
                    header.get("settings"),
                    token,
                )
                if owned is not None:
                    owned.add(s.sid)
                return {"ok": True, "rank": s.rank}, []
            if op in ("prefill", "step"):
                before = io_bytes()
                t0 = time.perf_counter()
                shares = shares_from(header.get("shares"), blobs)
                out = self.run(header.get("session"), token, op, shares)
                after = io_bytes()
                counts, out_blobs = share_blobs([out])
                stats = {
                    "seconds": time.perf_counter() - t0,
                    "read": after[0] - before[0],
                    "written": after[1] - before[1],
                }
                return {"ok": True, "shares": counts, "stats": stats}, out_blobs
            if op == "close":
                self.close(header.get("session"), token)
                if owned is not None:
                    owned.discard(header.get("session"))
                return {"ok": True}, []
            raise ProtocolViolation("unknown op")
        except MpcError as exc:  # the op only if it is one of ours: never echo client input
            log.info("request %s refused: %s", op if op in OPS else "?", exc.code)
            return {"ok": False, "error": exc.code, "message": str(exc)}, []

    def drop_connection(self, owned: set[str]) -> None:
        for sid in list(owned):
            with self._lock:
                session = self._sessions.get(sid)
            if session is None:
                continue
            with session.busy:
                self._wipe(session, "client disconnected")

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Start the control server and the reaper in background threads; returns the address."""
        service = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                owned: set[str] = set()
                try:
                    while True:
                        try:
                            header, blobs = recv_frame(sock)
                        except ProtocolViolation as exc:
                            send_frame(sock, {"ok": False, "error": exc.code, "message": str(exc)})
                            return  # framing is lost; the connection cannot continue
                        reply, out = service.handle(header, blobs, owned)
                        send_frame(sock, reply, out)
                except (ConnectionError, OSError):
                    pass
                finally:
                    service.drop_connection(owned)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server((host, port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="mpc-control").start()
        self.start()
        addr = self._server.server_address
        return str(addr[0]), int(addr[1])

    def start(self) -> None:
        """Start the reaper of idle sessions (`serve` does; a host calling `handle` must)."""
        if self._reaping is None:
            self._reaping = threading.Thread(target=self._reaper, daemon=True, name="mpc-reaper")
            self._reaping.start()

    def _reaper(self) -> None:
        while not self._stop.wait(1.0):
            self.reap()

    def shutdown(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            self._wipe(s, "party shutting down")
