"""`veil up`: run a local Veil network (a node and a relay as separate processes) and chat with it.

Each service runs as its own process, logging to a file under the data directory, so a crash in
one is visible and Ctrl-C stops them all cleanly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
from rich.console import Console

__all__ = ["LocalNetwork", "Service", "pick_port"]

NODE_ID = "node-a"


def pick_port(preferred: int) -> int:
    """`preferred` if it is free on loopback, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


@dataclass
class Service:
    """A child process with its log file."""

    name: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "veil", *self.args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def wait_ready(self, url: str, timeout: float) -> None:
        """Poll `url` until it answers 200; fail early, with the log's tail, if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited during startup:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become ready in {timeout:.0f} s")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class LocalNetwork:
    """A node and a relay on loopback, with state under `data_dir`."""

    def __init__(self, data_dir: Path, node_port: int = 8701, relay_port: int = 8780) -> None:
        self.data_dir = data_dir
        self.node_port = pick_port(node_port)
        self.relay_port = pick_port(relay_port)
        self.node_url = f"http://127.0.0.1:{self.node_port}"
        self.relay_url = f"http://127.0.0.1:{self.relay_port}"
        logs = data_dir / "logs"
        node_dir = data_dir / NODE_ID
        nodes_file = data_dir / "relay-nodes.json"
        self.node = Service(
            NODE_ID,
            [
                "node",
                "serve",
                "--port",
                str(self.node_port),
                "--keys",
                str(node_dir / "ohttp-keys.json"),
                "--identity",
                str(node_dir / "identity.json"),
            ],
            logs / f"{NODE_ID}.log",
        )
        self.relay = Service(
            "relay",
            ["relay", "serve", "--nodes", str(nodes_file), "--port", str(self.relay_port)],
            logs / "relay.log",
        )
        self._nodes_file = nodes_file

    def start(self, console: Console) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._nodes_file.write_text(
            json.dumps({"nodes": [{"id": NODE_ID, "url": self.node_url}]}, indent=2)
        )
        with console.status(f"starting {NODE_ID}: loading the model (about 20-30 s)..."):
            self.node.start()
            self.node.wait_ready(f"{self.node_url}/healthz", timeout=300)
        console.print(
            f"[green]✓[/] {NODE_ID} serving at {self.node_url} (log: {self.node.log_path})"
        )
        with console.status("starting the relay..."):
            self.relay.start()
            self.relay.wait_ready(f"{self.relay_url}/relay/{NODE_ID}/descriptor", timeout=60)
        console.print(f"[green]✓[/] relay at {self.relay_url} (log: {self.relay.log_path})")

    def check(self) -> None:
        for service in (self.node, self.relay):
            if not service.alive():
                raise RuntimeError(f"{service.name} stopped:\n{service.log_tail()}")

    def stop(self) -> None:
        for service in (self.relay, self.node):
            service.stop()


def default_data_dir() -> Path:
    return Path(os.environ.get("VEIL_HOME", ".veil"))
