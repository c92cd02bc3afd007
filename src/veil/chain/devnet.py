"""A local anvil devnet on loopback: find the binary, start it on a free port, stop it.

The binary comes from the pinned npm package `@foundry-rs/anvil`. Lookup order:
`$VEIL_ANVIL`, the repository's `node_modules`, then `PATH`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from veil import lifeline
from veil.chain.errors import DevnetError

__all__ = [
    "DEVNET_MNEMONIC",
    "Devnet",
    "DevnetAccount",
    "devnet_accounts",
    "find_anvil",
    "free_port",
]

# anvil's default (public, well-known) mnemonic: devnet only, never for real value.
DEVNET_MNEMONIC = "test test test test test test test test test test test junk"
ANVIL_RELATIVE = Path("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")


@dataclass(frozen=True)
class DevnetAccount:
    """A prefunded devnet account derived from DEVNET_MNEMONIC."""

    address: str
    private_key: str = field(repr=False)


def devnet_accounts(count: int = 10, mnemonic: str = DEVNET_MNEMONIC) -> list[DevnetAccount]:
    """The first `count` accounts anvil prefunds (BIP-44 path m/44'/60'/0'/0/i)."""
    from eth_account import Account
    from eth_account.hdaccount import key_from_seed, seed_from_mnemonic

    seed = seed_from_mnemonic(mnemonic, passphrase="")  # derived once, not per account
    accounts = []
    for i in range(count):
        key = key_from_seed(seed, f"m/44'/60'/0'/0/{i}")
        accounts.append(DevnetAccount(Account.from_key(key).address, "0x" + key.hex()))
    return accounts


def _repo_roots() -> list[Path]:
    here = Path(__file__).resolve()
    return [Path.cwd(), *here.parents]


def find_anvil() -> Path:
    """Locate the anvil binary or raise DevnetError saying how to install it."""
    env = os.environ.get("VEIL_ANVIL")
    if env:
        path = Path(env)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise DevnetError(f"VEIL_ANVIL={env} is not an executable file")
    for root in _repo_roots():
        candidate = root / ANVIL_RELATIVE
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("anvil")
    if on_path:
        return Path(on_path)
    raise DevnetError(
        "anvil not found: run `npm install` in the repository (it installs the pinned "
        "@foundry-rs/anvil), or set VEIL_ANVIL to the binary"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rpc_chain_id(url: str, timeout: float) -> int:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    req = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return int(json.loads(resp.read())["result"], 16)


class Devnet:
    """An anvil process on 127.0.0.1; use as a context manager or call start/stop.

    Attributes once started: `rpc_url`, `chain_id`, `accounts` (prefunded, with keys).
    """

    def __init__(
        self,
        *,
        chain_id: int = 31337,
        port: int | None = None,
        accounts: int = 10,
        block_time: float | None = None,
        anvil: Path | None = None,
        startup_timeout: float = 10.0,
        state_path: Path | None = None,
        state_interval_s: int = 5,
        log_path: Path | None = None,
        die_with_parent: bool = False,
    ) -> None:
        """`log_path`: append anvil's stderr there (default: a temporary file, read for the
        error when anvil fails to start). `die_with_parent`: run anvil under a lifeline
        (`veil.lifeline`), so it dies with this process even if it is SIGKILLed; start it
        then from a thread that lives as long as anvil should."""
        self.chain_id = chain_id
        self.port = port
        self.account_count = accounts
        self.block_time = block_time
        self.anvil = anvil
        self.startup_timeout = startup_timeout
        # With a state file the chain survives restarts: anvil loads it at start and writes
        # it every `state_interval_s` and on exit.
        self.state_path = state_path
        self.state_interval_s = state_interval_s
        self.log_path = log_path
        self.die_with_parent = die_with_parent
        self._stderr_start = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self.accounts: list[DevnetAccount] = []

    @property
    def rpc_url(self) -> str:
        if self.port is None:
            raise DevnetError("devnet not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """anvil's exit status once it has exited on its own; None while it runs, before it
        starts and after `stop`."""
        return None if self._proc is None else self._proc.poll()

    def start(self) -> Devnet:
        if self.running:
            return self
        binary = self.anvil or find_anvil()
        fixed_port = self.port is not None
        for _attempt in range(3):  # a just-freed port can be taken before anvil binds it
            port = self.port or free_port()
            cmd = [
                str(binary),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--chain-id",
                str(self.chain_id),
                "--accounts",
                str(self.account_count),
                "--mnemonic",
                DEVNET_MNEMONIC,
            ]
            if self.block_time:
                cmd += ["--block-time", str(self.block_time)]
            if self.state_path is not None:
                Path(self.state_path).parent.mkdir(parents=True, exist_ok=True)
                cmd += [
                    "--state",
                    str(self.state_path),
                    "--state-interval",
                    str(self.state_interval_s),
                ]
            self._proc = subprocess.Popen(
                lifeline.command(cmd) if self.die_with_parent else cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                # a file, not a pipe: a long-running anvil must never block on a full pipe
                stderr=self._stderr_file(),
                start_new_session=True,  # own process group: Ctrl-C in the CLI reaches us first
            )
            self.port = port
            try:
                ready = self._wait_ready()
            except BaseException:
                self.stop()
                raise
            if ready:
                self.accounts = devnet_accounts(self.account_count)
                return self
            err = self._collect_stderr()
            self.stop()
            if fixed_port or "in use" not in err.lower():
                raise DevnetError(f"anvil failed to start: {err.strip() or 'no output'}")
            self.port = None
        raise DevnetError("anvil could not bind a free port")

    def rpc(self, method: str, *params: object) -> object:
        """A raw JSON-RPC call to anvil (e.g. its `evm_*`/`anvil_*` test methods)."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
        req = urllib.request.Request(
            self.rpc_url, data=body.encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                answer = json.loads(resp.read())
        except (OSError, ValueError) as exc:
            raise DevnetError(f"{method} failed: {exc}") from exc
        if "error" in answer:
            raise DevnetError(f"{method} failed: {answer['error']}")
        return answer.get("result")

    def advance_time(self, seconds: int) -> None:
        """Move the chain clock forward and mine a block (for delays and windows)."""
        self.rpc("evm_increaseTime", int(seconds))
        self.rpc("evm_mine")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                got = _rpc_chain_id(self.rpc_url, timeout=1.0)
            except (OSError, urllib.error.URLError, ValueError, KeyError):
                time.sleep(0.02)
                continue
            if got != self.chain_id:
                raise DevnetError(f"anvil answered chain id {got}, expected {self.chain_id}")
            return True
        return False

    def _stderr_file(self) -> IO[bytes]:
        if self._stderr is not None:
            self._stderr.close()
        if self.log_path is None:
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (lives as long as anvil)
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            self._stderr = os.fdopen(fd, "a+b")
        self._stderr_start = self._stderr.seek(0, os.SEEK_END)
        return self._stderr

    def _collect_stderr(self) -> str:
        proc = self._proc
        if proc is not None and proc.poll() is None:  # started but never answered
            proc.kill()
            proc.wait()
        if self._stderr is None:
            return ""
        self._stderr.seek(self._stderr_start)
        return self._stderr.read().decode(errors="replace")

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate anvil (SIGTERM, then SIGKILL) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> Devnet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
