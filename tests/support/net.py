"""Loopback helpers for tests that run services as separate processes."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable

import httpx

__all__ = ["ServerThread", "Tap", "free_port", "until", "wait_idle", "wait_ready"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tap:
    """A TCP forwarder on a free loopback port to a loopback target (a port or "host:port").

    `data` records all bytes in both directions; `received` only what went to the target.
    """

    def __init__(self, target: int | str) -> None:
        self.target = int(str(target).rpartition(":")[2])
        self.data = bytearray()
        self.received = bytearray()
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:  # nothing listens there yet: refuse this one too
                conn.close()
                continue
            for a, b, inbound in ((conn, upstream, True), (upstream, conn, False)):
                threading.Thread(target=self._pump, args=(a, b, inbound), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, inbound: bool) -> None:
        try:
            while chunk := src.recv(65536):
                with self.lock:
                    self.data += chunk
                    if inbound:
                        self.received += chunk
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            src.close()  # the other direction's pump closes dst

    def close(self) -> None:
        self.server.close()


def wait_ready(url: str, procs: list[subprocess.Popen], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, "a server exited early"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never came up")


def until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll `check` until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


def wait_idle(engine, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Until the engine has no sequence in flight (AssertionError after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while not engine.idle:
        if time.monotonic() > deadline:
            raise AssertionError("engine still busy")
        time.sleep(0.01)


class ServerThread:
    """A real uvicorn server on a free loopback port, in a thread of the test process."""

    def __init__(self, app, port: int | None = None) -> None:  # type: ignore[no-untyped-def]
        """`port`: a given one (a restart on the same address), else a free one."""
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
