"""Session workers: spawned processes that each hold one session's SPU link and runtime, so
that the party can always end a session by killing its worker.

SPU 0.9.5 can keep a run blocked for good on a brpc link to a dead peer (its `recv_timeout`
does not fire after the send retries fail). A run inside the party's own process could then
never be stopped, and the session's shares would stay until the party restarts. So every
session runs in a worker: `python -m veil.mpc.worker`, started with `subprocess` (fork + exec:
forking a process that already runs SPU deadlocks SPU's global thread pool). The parent
(`veil.mpc.party.PartyService`) talks to it over a private socket pair and kills it when the
session ends: closed by the client (also in the middle of a run), idle past the timeout, a run
that fails, a run that stalls (no byte from the peers for the link timeout), or a client that
hangs up mid-run. The kill frees every share of the session at once. A worker serves one
session: SPU's link teardown is not reliable enough to reuse it (see
`PartyService._release_worker`). The next session's worker is started when a session ends
(not beside a running session, whose CPU it would take), and loads weights and compiles then.

The public weights are encoded once by the parent into an unlinked temporary file whose
descriptor each worker inherits and reads (never the torch model). A worker exits when its
parent's socket closes or when its parent process is gone (it then has another parent), and
ignores SIGINT (the parent decides on Ctrl-C), so no worker outlives its party.

Nothing here logs share bytes: the worker logs session ids, op names and error codes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from veil.mpc.errors import (
    LinkFailure,
    MpcConfigError,
    MpcError,
    PartyFailure,
    ProtocolViolation,
    error_from_code,
)
from veil.mpc.model import BUCKET, LayerWeights, LlamaShape
from veil.mpc.runtime import MpcConfig

__all__ = ["WARM_PROGRAMS", "WeightsFile", "Worker", "WorkerSetup", "io_bytes"]

log = logging.getLogger("veil.mpc.worker")  # also when run as __main__

# (kind, capacity, new tokens): the first cache bucket's programs, compiled before serving
WARM_PROGRAMS = (("prefill", 2 * BUCKET, 0), ("step", 2 * BUCKET, 1), ("step", 2 * BUCKET, BUCKET),
                 ("grow", 3 * BUCKET, 0), ("step", 3 * BUCKET, 1))  # fmt: skip
_PARENT_CHECK_S = 0.5  # how often a worker checks that its parent is alive
_POLL_S = 0.5  # how often the parent checks a running request for stalls


def io_bytes(pid: int | str = "self") -> tuple[int, int] | None:
    """(read, written) bytes of a process's read/write-family syscalls, sockets included."""
    try:
        with open(f"/proc/{pid}/io") as f:
            kv = dict(line.split(": ") for line in f.read().splitlines())
        return int(kv["rchar"]), int(kv["wchar"])
    except (OSError, KeyError, ValueError):
        return None


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs besides the weights; every duration in the unit its name says."""

    settings: MpcConfig
    shape: LlamaShape
    link_timeout_ms: int  # SPU's recv timeout on the links
    connect_timeout_s: float  # peers must join a session's link within this
    warm: bool  # compile WARM_PROGRAMS before reporting ready
    cert_path: str  # this party's link certificate (PEM) ...
    key_path: str  # ... and its key: mutual TLS on every link
    log_level: int = logging.INFO


class WeightsFile:
    """The public weights, encoded once for SPU, in an unlinked temporary file.

    Workers inherit its descriptor and rebuild the shares from it; the file disappears with
    the last process that holds it open, so a crashed party leaves nothing on disk.
    """

    def __init__(self, settings: MpcConfig, weights: LayerWeights) -> None:
        from veil.mpc.runtime import ShareCodec

        codec = ShareCodec(settings)
        self._file = tempfile.TemporaryFile(prefix="veil-mpc-weights-")  # noqa: SIM115 - kept open
        self.index: list[tuple[str, list[int]]] = []  # name -> lengths of meta, chunk, chunk...
        for name, w in weights.items():  # public values encode the same for every rank
            share = codec.public(w, 0)
            parts = [bytes(share.meta), *(bytes(c) for c in share.share_chunks)]
            self.index.append((name, [len(p) for p in parts]))
            for p in parts:
                self._file.write(p)
        self._file.flush()
        self.fd = self._file.fileno()

    def close(self) -> None:
        self._file.close()


def _read_weights(fd: int, index: list[tuple[str, list[int]]]) -> dict[str, Any]:
    from veil.mpc.runtime import make_share

    shares: dict[str, Any] = {}
    if not index:
        return shares
    with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
        i = 0
        for name, sizes in index:
            parts = []
            for n in sizes:
                parts.append(m[i : i + n])
                i += n
            shares[name] = make_share(parts[0], parts[1:])
    return shares


class Worker:
    """The parent's handle on one worker process. One request at a time."""

    def __init__(self, setup: WorkerSetup, weights: WeightsFile) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        try:
            fds = (theirs.fileno(), weights.fd)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "veil.mpc.worker", *map(str, fds)],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except OSError as exc:
            ours.close()
            raise PartyFailure(f"could not start a session worker: {exc}") from exc
        finally:
            theirs.close()
        self.pid = self.proc.pid
        self._started = time.monotonic()
        self._conn = Connection(ours.detach())
        self._lock = threading.Lock()
        self._ready = False
        self._killed: str | None = None  # why, once killed
        self.session: str | None = None  # the session it holds, for status and logs
        self._conn.send(("init", setup, weights.index))

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._killed is None and self.proc.poll() is None

    @property
    def ready(self) -> bool:
        return self._ready

    def wait_ready(self, timeout_s: float, start_limit_s: float) -> bool:
        """Wait up to `timeout_s` for the worker to have loaded the weights (and compiled, if
        warm); False if it is still starting. PartyFailure if it failed, died, or has been
        starting for more than `start_limit_s` (it is then killed)."""
        with self._lock:
            return self._wait_ready(timeout_s, start_limit_s)

    def poll_ready(self) -> bool:
        """Whether the worker is ready, without waiting (False while a request holds it)."""
        if self._ready:
            return True
        if not self._lock.acquire(blocking=False):
            return False
        try:
            return self._wait_ready(0.0, float("inf"))
        except PartyFailure:
            return False
        finally:
            self._lock.release()

    def _wait_ready(self, timeout_s: float, start_limit_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self._ready:
            if self._killed is not None:
                raise PartyFailure(f"the session worker was killed ({self._killed})")
            if time.monotonic() - self._started > start_limit_s:
                self.kill("it did not start in time")
                raise PartyFailure(f"session worker did not start in {start_limit_s:g} s")
            left = deadline - time.monotonic()
            if not wait([self._conn], max(0.0, min(left, _POLL_S))):
                if left <= 0:
                    return False
                continue
            try:
                reply = tuple(self._conn.recv())
            except (EOFError, OSError):
                self.kill("it died while starting")
                raise PartyFailure("the session worker died while starting") from None
            if reply[0] != "ready":
                self.kill("it failed to start")
                raise PartyFailure(f"session worker failed to start: {reply[-1]}")
            self._ready = True
        return True

    def kill(self, why: str) -> None:
        """Kill the process (every share it holds goes with it); a request waiting on it fails
        with `why`. Safe from any thread, any number of times."""
        if self._killed is None:
            self._killed = why
            log.info("session worker %d killed (%s)", self.pid, why)
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def close(self, why: str = "discarded") -> None:
        """Kill, then release the parent's end (once no request is waiting on it)."""
        self.kill(why)
        with self._lock:
            self._conn.close()

    # -- requests -----------------------------------------------------------------------------
    def open(
        self,
        sid: str,
        rank: int,
        links: list[str],
        peer_certs: list[str],
        handshake: dict[str, Any],
        timeout_s: float,
        interrupt: Any = None,
    ) -> None:
        """Link up with the peers (mutual TLS) and set up the session's SPU runtime."""
        message = ("open", sid, rank, links, peer_certs, handshake)
        self.request(message, timeout_s, interrupt=interrupt, late=LinkFailure)
        self.session = sid

    def run(self, op: str, shares: list[Any], stall_s: float, interrupt: Any = None) -> Any:
        """(output share meta, chunks, stats) of one prefill/step."""
        raw = [(bytes(s.meta), [bytes(c) for c in s.share_chunks]) for s in shares]
        return self.request(("run", op, raw), None, stall_s=stall_s, interrupt=interrupt)

    def request(
        self,
        message: tuple[Any, ...],
        timeout_s: float | None,
        *,
        stall_s: float | None = None,
        interrupt: Any = None,
        late: type[PartyFailure] = PartyFailure,
    ) -> Any:
        """Send one request and wait for its reply; the worker's typed errors are raised again.

        The worker is killed, and `PartyFailure` raised, when it dies, when `timeout_s` passes,
        when it receives no byte for `stall_s` (its peers are gone), or when `interrupt` (the
        client's control socket) becomes readable: a client only speaks mid-run to give up.
        `late` is the error for a missed `timeout_s`.
        """
        with self._lock:
            if self._killed is not None:
                raise PartyFailure(f"the session worker was killed ({self._killed})")
            try:
                self._conn.send(message)
            except OSError as exc:
                self.kill("its socket broke")
                raise PartyFailure("the session worker is gone") from exc
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            reply = self._await(deadline, stall_s, interrupt, str(message[0]), late)
        if reply[0] == "ok":
            return reply[1]
        if reply[0] == "err":
            raise error_from_code(str(reply[1]), str(reply[2]))
        self.kill("answered out of turn")
        raise PartyFailure("the session worker answered out of turn")

    def _await(
        self,
        deadline: float | None,
        stall_s: float | None,
        interrupt: Any,
        what: str,
        late: type[PartyFailure] = PartyFailure,
    ) -> tuple[Any, ...]:
        last_io = io_bytes(self.pid)
        quiet_since = time.monotonic()
        while True:
            ready = wait([self._conn, *([interrupt] if interrupt is not None else [])], _POLL_S)
            if self._conn in ready:
                try:
                    return tuple(self._conn.recv())
                except (EOFError, OSError):
                    why = self._killed or "it died"
                    self.kill(why)
                    raise PartyFailure(f"the session worker ended during {what} ({why})") from None
            if interrupt is not None and interrupt in ready:
                self.kill("the client left during a run")
                raise PartyFailure("the client left during the run")
            now = time.monotonic()
            if deadline is not None and now > deadline:
                self.kill(f"no answer to {what} in time")
                raise late(f"no answer to {what} in time; a peer is probably gone")
            if stall_s is not None:
                io = io_bytes(self.pid)
                if io is None or last_io is None or io[0] != last_io[0]:
                    last_io, quiet_since = io, now
                elif now - quiet_since > stall_s:
                    self.kill(f"no data from its peers for {stall_s:g} s")
                    raise PartyFailure(
                        f"no data from the peer parties for {stall_s:g} s; a peer is gone"
                    )


# -- the worker process -------------------------------------------------------------------------
class _Session:
    """The worker's one session: its SPU link and runtime (they end with the process)."""

    def __init__(self, setup: WorkerSetup, weights: dict[str, Any]) -> None:
        self.setup = setup
        self.weights = weights
        self.sid: str | None = None
        self.link: Any = None
        self.runtime: Any = None

    def handle(self, message: tuple[Any, ...]) -> Any:
        op = message[0]
        if op == "open":
            return self.open(*message[1:])
        if op == "run":
            return self.run(message[1], message[2])
        raise ProtocolViolation("unknown worker request")

    def open(self, sid: str, rank: int, links: list[str], peer_certs: list[str],
             handshake: dict[str, Any]) -> None:  # fmt: skip
        from veil.mpc.runtime import PartyRuntime

        if self.sid is not None:
            raise PartyFailure("the worker already holds a session")
        self.sid = sid
        self.link = self._link(sid, rank, links, peer_certs)
        mine = json.dumps(handshake, sort_keys=True)
        try:
            theirs = self.link.all_gather(mine)
        except Exception as exc:
            raise LinkFailure(f"session {sid}: peers did not answer over the link: {exc}") from exc
        if any(t != mine for t in theirs):
            raise MpcConfigError("peers disagree on session, settings or model weights")
        try:
            self.runtime = PartyRuntime(self.link, self.setup.settings, self.setup.shape,
                                        self.weights)  # fmt: skip
        except Exception as exc:
            raise PartyFailure(f"SPU runtime setup failed: {exc}") from exc
        log.info("session %s open as rank %d (mutual TLS)", sid, rank)

    def _link(self, sid: str, rank: int, links: list[str], peer_certs: list[str]) -> Any:
        """The session's SPU link, mutual TLS whose only trust anchors are the peers' certs."""
        from spu import libspu

        s = self.setup
        desc = libspu.link.Desc()
        desc.id = f"veil-{sid}"
        for r, addr in enumerate(links):
            desc.add_party(f"p{r}", addr)
        # SPU's own timeout is a backstop: the parent kills a run that stalls for the link
        # timeout; it also bounds the wait for peers to join, which may be starting a worker
        desc.recv_timeout_ms = max(s.link_timeout_ms, int(s.connect_timeout_s * 1000))
        desc.http_timeout_ms = 5_000
        desc.connect_retry_interval_ms = 200
        desc.connect_retry_times = max(1, int(s.connect_timeout_s / 0.2))
        desc.enable_ssl = True
        with tempfile.TemporaryDirectory(prefix="veil-mpc-peers-") as tmp:
            ca = Path(tmp) / "peers.pem"  # read by brpc while the link is made, then removed
            ca.write_text("".join(peer_certs))
            for opts in (desc.client_ssl_opts, desc.server_ssl_opts):  # both: mutual TLS
                opts.cert.certificate_path = s.cert_path
                opts.cert.private_key_path = s.key_path
                opts.verify.ca_file_path = str(ca)
                opts.verify.verify_depth = 1  # > 0: the peer must present a trusted cert
            try:
                return libspu.link.create_brpc(desc, rank)
            except Exception as exc:
                raise LinkFailure(
                    f"could not link session {sid} with its peers over mutual TLS (a peer is "
                    f"down, or its certificate is not the one the client gave): {exc}"
                ) from exc

    def run(self, op: str, raw: list[tuple[bytes, list[bytes]]]) -> Any:
        from veil.mpc.runtime import make_share

        if self.runtime is None:
            raise PartyFailure("no session in this worker")
        shares = [make_share(meta, chunks) for meta, chunks in raw]
        before = io_bytes()
        t0 = time.perf_counter()
        if op == "prefill" and len(shares) == 2:
            out = self.runtime.prefill(shares[0], shares[1])
        elif op == "step" and len(shares) == 1:
            out = self.runtime.step(shares[0])
        else:
            raise ProtocolViolation(f"{op} with {len(shares)} shares")
        after = io_bytes()
        stats = {"seconds": time.perf_counter() - t0}
        if before is not None and after is not None:
            stats.update(read=after[0] - before[0], written=after[1] - before[1])
        return bytes(out.meta), [bytes(c) for c in out.share_chunks], stats


def _exit_with_parent() -> None:
    """Exit as soon as the parent process is gone (this process then has another parent),
    even while the main thread is stuck in an SPU run (which releases the GIL)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(_PARENT_CHECK_S)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True, name="mpc-parent-watch").start()


def main(argv: list[str]) -> int:
    conn_fd, weights_fd = int(argv[0]), int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent
    _exit_with_parent()
    conn = Connection(conn_fd)
    try:
        _init, setup, index = conn.recv()
    except (EOFError, OSError):
        return 1
    logging.basicConfig(
        level=setup.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("jax").setLevel(logging.WARNING)
    try:
        weights = _read_weights(weights_fd, index)
        os.close(weights_fd)
        if setup.warm:
            from veil.mpc.runtime import compile_program

            for program in WARM_PROGRAMS:
                compile_program(setup.shape, *program)
    except Exception as exc:
        conn.send(("err", PartyFailure.code, f"{type(exc).__name__}: {exc}"))
        return 1
    conn.send(("ready", os.getpid()))
    log.info("session worker %d ready", os.getpid())
    session = _Session(setup, weights)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return 0
        try:
            reply: tuple[Any, ...] = ("ok", session.handle(message))
        except MpcError as exc:
            reply = ("err", exc.code, str(exc))
        except Exception as exc:  # SPU raises RuntimeError subclasses with C++ messages
            reply = ("err", PartyFailure.code, f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except OSError:
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
