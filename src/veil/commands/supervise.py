"""Supervision of `veil up`'s services: one crashed service is restarted, not the end.

Each service (the chain, the nodes, the relay, the gateway) is a child process under a
lifeline (`veil.lifeline`: it dies with `veil up`, with its whole process tree). Once the
network is up, a supervisor thread watches them. When one exits on its own, the console says
which, how (exit code or signal) and which log to read, and the service is started again with
the same arguments (same port, same identity and keys; a node registers itself again at
start, as on every start; anvil reloads its state file) after a delay that doubles with each
exit (1, 2, 4 ... s, at most 30 s) and starts over once the service has run for a minute.
A service that exits more than `max_restarts` times within `window_s` is not restarted: the
supervisor gives up and tells its owner, and `veil up` stops the whole network with a
non-zero exit.

The supervisor thread also starts the restarted processes, so it lives until the network is
stopped: a lifeline's parent-death signal fires when the thread that started it ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import httpx

from veil import lifeline

__all__ = [
    "ChainService",
    "NetworkFailed",
    "RestartPolicy",
    "Service",
    "Supervised",
    "Supervisor",
    "describe_exit",
    "raise_in_main_thread",
]


def _open_log(path: Path) -> IO[bytes]:
    """The service's log, for appending; private to the user whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")


@dataclass
class Service:
    """A Veil child process (`python -m veil ARGS`) with its log file, under a lifeline.

    `health_url` answers 200 once the service serves (the supervisor says when a restarted
    service is back)."""

    name: str
    args: list[str]
    log_path: Path
    health_url: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start the process (again, after an exit: same arguments). Start it from a thread
        that outlives it: the lifeline stops it when that thread ends."""
        if self._log is not None:
            self._log.close()
        self._log = _open_log(self.log_path)
        self.proc = lifeline.popen(
            [sys.executable, "-m", "veil", *self.args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited (negative: killed by that signal)."""
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """Whether it serves now: `health_url` answers 200 (without one: it runs)."""
        if not self.alive():
            return False
        if self.health_url is None:
            return True
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.health_url, timeout=1).status_code == 200
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the lifeline passes it to the whole process group), SIGKILL on timeout."""
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

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def ready(self, url: str) -> bool:
        """Whether `url` answers 200 now; raises, with the log's tail, if the process died."""
        if not self.alive():
            raise RuntimeError(f"{self.name} exited during startup:\n{self.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url, timeout=2).status_code == 200
        return False

    def wait_ready(self, url: str, timeout: float) -> None:
        """Poll `url` until it answers 200; fail early if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready(url):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become ready in {timeout:.0f} s")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ChainService:
    """The devnet chain (a `veil.chain.Devnet`) as a supervised service: a restart runs anvil
    again on the same port with the same state file (it loses at most the blocks of the last
    `state_interval_s` seconds, which anvil had not written yet)."""

    name = "chain"

    def __init__(self, devnet: Any, log_path: Path) -> None:
        self.devnet = devnet
        self.log_path = log_path

    def start(self) -> None:
        self.devnet.start()  # waits until anvil answers

    @property
    def returncode(self) -> int | None:
        return self.devnet.returncode

    def healthy(self) -> bool:
        return bool(self.devnet.running)


class Supervised(Protocol):
    """What the supervisor needs of a service."""

    @property
    def name(self) -> str: ...
    @property
    def log_path(self) -> Path: ...
    @property
    def returncode(self) -> int | None: ...
    def start(self) -> None: ...
    def healthy(self) -> bool: ...


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a service that exited, and when to give up on it."""

    first_delay_s: float = 1.0
    max_delay_s: float = 30.0  # the delay doubles with each exit, up to this
    stable_s: float = 60.0  # a service that ran this long starts over from first_delay_s
    max_restarts: int = 5  # restarts within window_s; the next exit gives up
    window_s: float = 300.0
    poll_s: float = 0.5  # how often the services are looked at


def describe_exit(returncode: int) -> str:
    """`exited with code 1` or `was killed by SIGKILL`, for the console."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}"


@dataclass
class _Watch:
    """The supervisor's record of one service."""

    delay: float
    started_at: float
    exits: deque[float] = field(default_factory=deque)
    restart_at: float | None = None  # set while a restart is due
    restarted: bool = False  # restarted, not yet seen healthy


class NetworkFailed(BaseException):
    """Raised in the main thread when supervision gives up: a BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way (a chat loop) swallows it."""


def raise_in_main_thread(sig: signal.Signals = signal.SIGUSR1) -> Callable[[str], None]:
    """An `on_give_up` for a command: raises NetworkFailed(message) in the main thread, even
    while it waits in a blocking read (the signal interrupts it). Call from the main thread;
    `sig` from elsewhere, without a failure, is ignored."""
    failures: list[str] = []

    def handler(_signum: int, _frame: object) -> None:
        if failures:
            raise NetworkFailed(failures[0])

    signal.signal(sig, handler)
    main = threading.main_thread().ident
    assert main is not None

    def give_up(message: str) -> None:
        failures.append(message)
        signal.pthread_kill(main, sig)

    return give_up


class Supervisor:
    """Restarts the services that exit, with a growing delay; gives up on one that keeps
    exiting. `report` gets one console line per event (rich markup); `on_give_up` the reason,
    once, from the supervisor thread."""

    def __init__(
        self,
        services: Sequence[Supervised],
        *,
        report: Callable[[str], None],
        on_give_up: Callable[[str], None],
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.services = list(services)
        self.report = report
        self.on_give_up = on_give_up
        self.policy = policy or RestartPolicy()
        self.failure: str | None = None
        self._clock = clock
        now = clock()
        self._watch = {s.name: _Watch(self.policy.first_delay_s, now) for s in self.services}
        self._lock = threading.Lock()
        self._held = False
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Supervisor:
        """Watch from a thread of its own (it also starts the restarted processes)."""
        self._thread = threading.Thread(target=self._run, name="veil-supervisor", daemon=True)
        self._thread.start()
        return self

    def hold(self) -> None:
        """No restart from now on (before stopping the services); returns once a restart
        under way has finished."""
        with self._lock:
            self._held = True

    def close(self) -> None:
        """End the thread. Stop the services first: the processes this thread restarted get
        their parent-death signal when it ends."""
        self.hold()
        self._closing.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._closing.wait(self.policy.poll_s):
            try:
                self.tick()
            except Exception as exc:  # a bug here must not end supervision silently
                self.report(f"[red]supervisor error:[/] {exc!r}")

    def tick(self) -> None:
        """Look at every service once: note exits, restart those due, say who is back."""
        with self._lock:
            if self._held or self.failure is not None:
                return
            for service in self.services:
                watch = self._watch[service.name]
                if watch.restart_at is not None:
                    if self._clock() >= watch.restart_at:
                        self._restart(service, watch)
                    continue
                code = service.returncode
                if code is None:
                    if watch.restarted and service.healthy():
                        watch.restarted = False
                        self.report(f"[green]✓[/] {service.name} is back")
                    continue
                self._exited(service, watch, describe_exit(code))
                if self.failure is not None:
                    return

    def _exited(self, service: Supervised, watch: _Watch, how: str) -> None:
        policy, now = self.policy, self._clock()
        watch.restarted = False
        if now - watch.started_at >= policy.stable_s:
            watch.delay = policy.first_delay_s
        watch.exits.append(now)
        while watch.exits and now - watch.exits[0] > policy.window_s:
            watch.exits.popleft()
        if len(watch.exits) > policy.max_restarts:
            self.failure = (
                f"{service.name} {how}: {len(watch.exits)} exits in {policy.window_s:g} s, "
                f"not restarting it again (log: {service.log_path})"
            )
            self.report(f"[red]✗ {self.failure}; stopping the network[/]")
            self.on_give_up(self.failure)
            return
        delay, watch.delay = watch.delay, min(watch.delay * 2, policy.max_delay_s)
        watch.restart_at = now + delay
        self.report(
            f"[red]✗[/] {service.name} {how} (log: {service.log_path}); "
            f"restarting it in {delay:g} s"
        )

    def _restart(self, service: Supervised, watch: _Watch) -> None:
        watch.restart_at = None
        watch.started_at = self._clock()
        with contextlib.suppress(OSError), _open_log(service.log_path) as log:
            log.write(f"\n--- veil up: restarting {service.name} ---\n".encode())
        try:
            service.start()
        except Exception as exc:
            self._exited(service, watch, f"could not be started again ({exc})")
            return
        watch.restarted = True
        self.report(f"[yellow]↻[/] {service.name} restarted")
