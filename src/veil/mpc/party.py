"""An MPC party: serves sessions for clients, computing on secret shares with two peer parties.

Each party has two addresses: a control address where clients send shares and get shares back
(the `channel` framing), and a link address where SPU connects it to its peers for the protocol
itself. The control address is either a plain TCP port (`serve`, as `veil mpc party` runs it) or
a node's `POST /v1/mpc` route (`handle`, as `veil node serve --mpc-link` runs it), which clients
reach inside Oblivious HTTP through the relay.

A client opens a session by telling each of its three chosen parties the session id, the party's
rank, all three link addresses, all three link certificates and a token for that party alone;
the parties then build an SPU link for that session with mutual TLS (each trusts exactly the
other two certificates, `veil.mpc.linkcert`), check each other's settings and model digest over
it, and keep the secret KV cache between steps. The session id is known to all three parties
(it names the link); the token is not, so only the client can run, step or close the session on
a party (a party that knows the id cannot drive its peers and collect their output shares).

Each session runs in its own session worker, a spawned process that holds the SPU link and
runtime (`veil.mpc.worker`): SPU can block for good on a link to a dead peer, and killing the
worker is the one sure way to stop such a run and free its shares. A session ends, and its
worker is killed with every share in it, when the client closes it (during a run too), when it
idles past the timeout, or when a run fails or stalls (no byte from the peers for the link
timeout); over a TCP control connection, also when that connection closes or the client speaks
during a run. The next session's worker starts when a session ends (a warm spare).

One session at a time per party: SPU runs are collective, so sessions interleaved in different
orders on different parties would deadlock; a second client gets `PartyBusy`.
"""

from __future__ import annotations

import hmac
import logging
import re
import shutil
import socket
import socketserver
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
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
from veil.mpc.linkcert import LinkIdentity, cert_subject, check_cert_pem
from veil.mpc.model import LayerWeights, LlamaShape
from veil.mpc.runtime import MpcConfig, make_share
from veil.mpc.worker import WeightsFile, Worker, WorkerSetup, io_bytes

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
    settings: MpcConfig = field(default_factory=MpcConfig)
    session_timeout_s: float = 300.0  # an idle session is wiped after this
    link_timeout_ms: int = 60_000  # a peer silent this long mid-run fails the session
    connect_timeout_s: float = 30.0  # peers must join a new session's link within this
    cert_dir: str | None = None  # link certificate + key (made on first start, key 0600);
    # None = a fresh pair in a temporary directory, removed at shutdown
    warm: bool = True  # session workers compile the first cache bucket's programs up front
    worker_start_timeout_s: float = 300.0  # a new session worker must be ready within this


@dataclass
class _Session:
    sid: str
    rank: int
    token: str
    worker: Worker | None = None  # the process holding this session's link and shares
    aborted: str | None = None  # why the session was stopped while a request held it
    last_used: float = field(default_factory=time.monotonic)
    busy: threading.Lock = field(default_factory=threading.Lock)


class PartyService:
    """The party's state and request handling; `serve()` puts it behind a TCP control port.

    `start()` (or `serve()`) starts the reaper of idle sessions and the first session worker;
    `warm()` also waits until that worker is ready; `shutdown()` kills every worker.
    `status` (TCP, operator only) lists the open sessions and the live workers.
    """

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
        self._own_cert_dir: str | None = None
        cert_dir = config.cert_dir
        if cert_dir is None:
            cert_dir = self._own_cert_dir = tempfile.mkdtemp(prefix="veil-mpc-link-")
        self.identity = LinkIdentity.load_or_create(Path(cert_dir))
        self._weights = WeightsFile(config.settings, weights)  # encoded once, for every worker
        self._setup = WorkerSetup(
            settings=config.settings,
            shape=shape,
            link_timeout_ms=config.link_timeout_ms,
            connect_timeout_s=config.connect_timeout_s,
            warm=config.warm,
            cert_path=str(self.identity.cert_path),
            key_path=str(self.identity.key_path),
            log_level=logging.getLogger().getEffectiveLevel(),
        )
        self._spare: Worker | None = None  # the fresh worker the next session takes
        self._workers: list[Worker] = []  # every worker started and not yet reaped
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
            "cert": self.identity.cert_pem,  # the link's TLS certificate (mutual TLS)
            "settings": self.config.settings.to_dict(),
            "shape": self.shape.to_dict(),
            "weights_sha256": self.weights_sha256,
        }

    def warm(self) -> None:
        """Start the first session worker and wait until it is ready (weights loaded, and the
        first cache bucket's programs compiled when `config.warm`), so a session starts fast."""
        worker = self._ensure_spare()
        limit = self.config.worker_start_timeout_s
        if worker is not None and not worker.wait_ready(limit, limit):
            raise PartyFailure(f"the session worker did not start within {limit:g} s")

    def active_sessions(self) -> list[str]:
        with self._lock:
            return sorted(self._sessions)

    def workers(self) -> list[dict[str, Any]]:
        """The live session workers: pid, whether ready, the session each holds (None: idle)."""
        with self._lock:
            self._workers = [w for w in self._workers if w.alive]
            workers = list(self._workers)
        return [{"pid": w.pid, "ready": w.poll_ready(), "session": w.session} for w in workers]

    # -- workers ----------------------------------------------------------------------------
    def _spawn(self) -> Worker:
        worker = Worker(self._setup, self._weights)
        self._workers.append(worker)
        log.info("session worker %d starting", worker.pid)
        return worker

    def _ensure_spare(self) -> Worker | None:
        """A worker for the next session, started now if there is none (None when stopping)."""
        with self._lock:
            if self._stop.is_set():
                return None
            if self._spare is None or not self._spare.alive:
                self._spare = self._spawn()
            return self._spare

    def _take_worker(self) -> Worker:
        """The spare for a new session. The next spare starts when this session ends
        (`_release_worker`), not now: loading the weights and compiling beside a running
        session took CPU from it (11.2 instead of 10.1 s per SmolLM2 token on 2 cores)."""
        with self._lock:
            if self._stop.is_set():
                raise PartyBusy("this party is shutting down")
            worker, self._spare = self._spare, None
            if worker is None or not worker.alive:
                worker = self._spawn()
        return worker

    def _keep_starting(self, worker: Worker) -> None:
        """A worker not ready yet goes back to be the spare; it keeps starting."""
        spare: Worker | None = worker
        with self._lock:
            if (self._spare is None or not self._spare.ready) and not self._stop.is_set():
                spare, self._spare = self._spare, worker
        if spare is not None:
            spare.close()

    def _release_worker(self, worker: Worker, why: str) -> None:
        """A session's worker dies with the session: every share it held goes with it.

        (Reusing it for the next session was tried: SPU 0.9.5's `stop_link` blocks for about
        9 s of send retries when a peer stopped first, and brpc can fail a CHECK on a TLS socket
        closed under an RPC in flight, after which the worker cannot link again.)"""
        worker.close(why)
        self._ensure_spare()

    # -- session lifecycle ------------------------------------------------------------------
    def open(
        self,
        sid: Any,
        rank: Any,
        links: Any,
        settings: Any,
        token: Any,
        certs: Any = None,
        interrupt: Any = None,
    ) -> _Session:
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
        peer_certs = self._peer_certs(certs, rank, world)
        with self._lock:
            if sid in self._sessions:
                raise SessionExists(f"session {sid} is already open here")
            if sid in self._expired:
                raise SessionExpired(f"session {sid} ended; open a new one")
            if self._sessions:
                raise PartyBusy("this party is serving another session; retry later")
            session = _Session(sid, rank, token)
            session.busy.acquire()  # a close that comes during link setup aborts it
            self._sessions[sid] = session
        try:
            session.worker = self._take_worker()
            # the peers wait `connect_timeout_s` for this party to join the link: a worker
            # still starting (just replaced) must be ready well within it, or not be used yet
            if not session.worker.wait_ready(
                self.config.connect_timeout_s / 2, self.config.worker_start_timeout_s
            ):
                self._keep_starting(session.worker)
                session.worker = None
                raise PartyBusy("this party is starting a session worker; retry shortly")
            if session.aborted:
                raise PartyFailure(f"session {sid} stopped while opening ({session.aborted})")
            session.worker.open(
                sid,
                rank,
                links,
                peer_certs,
                self._handshake(sid),
                self.config.connect_timeout_s + self.config.link_timeout_ms / 1000 + 10.0,
                interrupt=interrupt,
            )
        except BaseException as exc:
            code = exc.code if isinstance(exc, MpcError) else type(exc).__name__
            self._wipe(session, f"link setup failed: {code}")
            raise
        finally:
            session.last_used = time.monotonic()
            session.busy.release()
        log.info("session %s open as rank %d (worker %d)", sid, rank, session.worker.pid)
        return session

    def _peer_certs(self, certs: Any, rank: int, world: int) -> list[str]:
        """The other parties' link certificates from the client's list of all of them."""
        if not isinstance(certs, list) or len(certs) != world:
            raise MpcConfigError(
                f"the client must give the link certificates of all {world} parties "
                "(the links are mutual TLS)"
            )
        certs = [check_cert_pem(c) for c in certs]
        if certs[rank].strip() != self.identity.cert_pem.strip():
            raise MpcConfigError("the link certificate given for this party is not its own")
        if len({cert_subject(c) for c in certs}) != world:  # TLS finds anchors by name
            raise MpcConfigError("two parties of the session have the same link certificate name")
        return [c for r, c in enumerate(certs) if r != rank]

    def _handshake(self, sid: str) -> dict[str, Any]:
        """What all parties of a session must agree on, checked over the link."""
        return {"session": sid, **self.hello(), "link": None, "cert": None}

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
        """End the session: its worker is killed, and every share, the KV cache and the link
        go with the process. Call with `session.busy` held, or after `_abort`.

        The session stays registered until its worker is dead, so a new session cannot start
        here (it gets `PartyBusy`) while the old one's link port is still held.
        """
        with self._lock:
            if self._sessions.get(session.sid) is not session:
                return
        worker, session.worker = session.worker, None
        if worker is not None:
            self._release_worker(worker, f"session {session.sid} {why}")
        with self._lock:
            del self._sessions[session.sid]
            self._expired[session.sid] = None
            while len(self._expired) > _EXPIRED_KEPT:
                self._expired.popitem(last=False)
        log.info("session %s wiped (%s)", session.sid, why)

    def _abort(self, session: _Session, why: str) -> None:
        """Stop whatever request holds the session now: kill its worker (from any thread)."""
        session.aborted = why
        worker = session.worker
        if worker is not None:
            worker.kill(why)

    def _end(self, session: _Session, why: str) -> None:
        """End a session whether or not a request holds it (a stuck run is killed)."""
        if not session.busy.acquire(blocking=False):
            self._abort(session, f"{why} during a run")
            session.busy.acquire()  # the killed request fails at once and releases it
        try:
            self._wipe(session, why)
        finally:
            session.busy.release()

    def close(self, sid: Any, token: Any) -> None:
        self._end(self._get(sid, token), "closed by client")

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
    def run(
        self, sid: Any, token: Any, op: str, shares: list[Any], interrupt: Any = None
    ) -> tuple[Any, dict[str, Any]]:
        """(output share, stats) of one prefill/step. A run that fails, stalls (no byte from
        the peers for the link timeout) or is interrupted kills the worker and the session."""
        session = self._get(sid, token)
        with session.busy:
            worker = session.worker
            if worker is None or session.aborted:
                raise SessionExpired(f"session {sid} was wiped")
            session.last_used = time.monotonic()
            try:
                meta, chunks, stats = worker.run(
                    op, shares, self.config.link_timeout_ms / 1000, interrupt
                )
            except PartyFailure as exc:
                self._wipe(session, f"run failed: {exc.code}")
                raise
            session.last_used = time.monotonic()
            return make_share(meta, chunks), stats

    # -- control channel --------------------------------------------------------------------
    def handle(
        self,
        header: dict[str, Any],
        blobs: list[bytes],
        owned: set[str] | None = None,
        *,
        public: bool = False,
        interrupt: Any = None,
    ) -> tuple[dict[str, Any], list[bytes]]:
        """One request -> one reply; typed errors become {"error": code} replies.

        `owned` collects the sessions a TCP connection opened (wiped when it drops); None
        where there is no connection to tie them to (the node's HTTP route). `public` hides
        `status` (open session ids, worker pids) from callers who are not the operator.
        `interrupt`: the client's socket on a TCP connection; if it becomes readable during
        an open or a run, the client has given up (it sent its close, or hung up), and the
        session worker is killed at once.
        """
        op = header.get("op")
        token = header.get("token")
        try:
            if op == "hello":
                return {"ok": True, **self.hello()}, []
            if op == "status" and not public:
                return {"ok": True, "sessions": self.active_sessions(),
                        "workers": self.workers()}, []  # fmt: skip
            if op == "open":
                s = self.open(
                    header.get("session"),
                    header.get("rank"),
                    header.get("links"),
                    header.get("settings"),
                    token,
                    header.get("certs"),
                    interrupt,
                )
                if owned is not None:
                    owned.add(s.sid)
                return {"ok": True, "rank": s.rank}, []
            if op in ("prefill", "step"):
                t0 = time.perf_counter()
                shares = shares_from(header.get("shares"), blobs)
                out, stats = self.run(header.get("session"), token, op, shares, interrupt)
                counts, out_blobs = share_blobs([out])
                stats = {**stats, "seconds": time.perf_counter() - t0}
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
            if session is not None:
                self._end(session, "client disconnected")

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
                        reply, out = service.handle(header, blobs, owned, interrupt=sock)
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
        """Start the reaper of idle sessions and the first session worker (`serve` does; a
        host calling `handle` must)."""
        self._ensure_spare()
        if self._reaping is None:
            self._reaping = threading.Thread(target=self._reaper, daemon=True, name="mpc-reaper")
            self._reaping.start()

    def _reaper(self) -> None:
        while not self._stop.wait(1.0):
            self.reap()

    def shutdown(self) -> None:
        """Stop serving: end every session, kill every session worker, remove temporary files."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            self._end(s, "party shutting down")
        with self._lock:
            workers, self._workers, self._spare = list(self._workers), [], None
        for w in workers:
            w.close()
        self._weights.close()
        if self._own_cert_dir is not None:
            shutil.rmtree(self._own_cert_dir, ignore_errors=True)
