"""Starting party processes on loopback: for `veil mpc chat --local`, tests and the benchmark."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from veil.mpc.errors import PartyFailure
from veil.mpc.runtime import MpcConfig

__all__ = [
    "PartyProcess",
    "free_link_port",
    "free_port",
    "start_parties",
    "start_party",
    "wait_ready",
]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


LINK_PORTS = (20000, 32768)  # below Linux's ephemeral range (32768-60999 by default)


def free_link_port(host: str = "127.0.0.1") -> int:
    """A free port for a party's SPU link, outside the ephemeral range.

    A link port is bound only while a session runs. Between sessions, brpc's reconnect attempts
    from the peers to it on the same host may get that very port as their own local port (a
    TCP self-connect) if it is in the ephemeral range; the next session could not bind it.
    """
    for _ in range(200):
        port = secrets.randbelow(LINK_PORTS[1] - LINK_PORTS[0]) + LINK_PORTS[0]
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise PartyFailure(f"no free link port in {LINK_PORTS}")


@dataclass
class PartyProcess:
    """A running `veil mpc party` child process."""

    proc: subprocess.Popen[bytes]
    control: str  # host:port for clients
    link: str  # host:port for peers
    log_path: Path  # its stdout+stderr (its session workers' too)
    cert_dir: Path | None = None  # its link certificate and key

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """Die abruptly, as a crashed node would (its session workers exit when they notice)."""
        self.proc.kill()
        self.proc.wait()


def start_party(
    model: str,
    settings: MpcConfig,
    log_path: Path,
    link: str | None = None,
    cert_dir: Path | None = None,
    extra_args: tuple[str, ...] = (),
) -> PartyProcess:
    """Start `veil mpc party` on 127.0.0.1 (a free link port unless `link`); see `wait_ready`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    link = link or f"127.0.0.1:{free_link_port()}"
    cmd = [
        sys.executable, "-m", "veil", "mpc", "party",
        "--listen", "127.0.0.1:0", "--link", link, "--model", model,
        "--protocol", settings.protocol, "--exp-mode", settings.exp_mode,
        "--sigmoid-mode", settings.sigmoid_mode,
        "--fxp-bits", str(settings.fxp_fraction_bits),
        *(["--cert-dir", str(cert_dir)] if cert_dir is not None else []),
        *extra_args,
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    return PartyProcess(proc, "", link, log_path, cert_dir)


def wait_ready(parties: list[PartyProcess], timeout_s: float = 300.0) -> None:
    """Wait until each party has printed `READY <control> <link>`; PartyFailure if one exits."""
    deadline = time.monotonic() + timeout_s
    for p in parties:
        while not p.control:
            for line in p.log_path.read_text(errors="replace").splitlines():
                if line.startswith("READY "):
                    p.control = line.split()[1]
            if p.control:
                break
            if p.proc.poll() is not None:
                raise PartyFailure(f"party exited during startup; see {p.log_path}")
            if time.monotonic() > deadline:
                raise PartyFailure(f"party not ready in {timeout_s:.0f} s; see {p.log_path}")
            time.sleep(0.1)


def start_parties(
    model: str,
    settings: MpcConfig,
    log_dir: Path,
    extra_args: tuple[str, ...] = (),
    ready_timeout_s: float = 300.0,
) -> list[PartyProcess]:
    """Start `settings.world_size` parties on 127.0.0.1 and wait until each prints READY.

    Each keeps its link certificate in `log_dir`/party<rank>-link."""
    log_dir.mkdir(parents=True, exist_ok=True)
    parties: list[PartyProcess] = []
    try:
        for rank in range(settings.world_size):
            parties.append(
                start_party(
                    model,
                    settings,
                    log_dir / f"party{rank}.log",
                    cert_dir=log_dir / f"party{rank}-link",
                    extra_args=extra_args,
                )
            )
        wait_ready(parties, ready_timeout_s)
    except BaseException:
        for p in parties:
            p.stop()
        raise
    return parties
