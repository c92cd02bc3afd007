"""`veil up`'s supervisor: a service that exits is restarted after a delay that doubles (and
starts over after a stable run); one that keeps exiting makes it give up, once, with a reason.

First on a fake clock with fake services (the policy, exactly), then with real processes under
lifelines: a script that crashes once comes back, one that always crashes ends in a give-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.processes import descendants
from veil import lifeline
from veil.commands.supervise import (
    NetworkFailed,
    RestartPolicy,
    Supervisor,
    describe_exit,
    raise_in_main_thread,
)

POLICY = RestartPolicy(
    first_delay_s=1.0, max_delay_s=4.0, stable_s=60.0, max_restarts=4, window_s=300.0
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Fake:
    """A service whose exit the test decides; `start` records the time it was called."""

    name: str
    log_path: Path
    clock: Clock
    returncode: int | None = None
    starts: list[float] = field(default_factory=list)
    fail_start: Exception | None = None

    def start(self) -> None:
        self.starts.append(self.clock.now)
        if self.fail_start is not None:
            raise self.fail_start
        self.returncode = None

    def healthy(self) -> bool:
        return self.returncode is None


def supervisor(tmp_path: Path, policy: RestartPolicy = POLICY):  # type: ignore[no-untyped-def]
    clock = Clock()
    fake = Fake("relay", tmp_path / "relay.log", clock)
    lines: list[str] = []
    gave_up: list[str] = []
    sup = Supervisor(
        [fake], report=lines.append, on_give_up=gave_up.append, policy=policy, clock=clock
    )
    return sup, fake, clock, lines, gave_up


def crash_and_restart(sup: Supervisor, fake: Fake, clock: Clock, code: int = 1) -> float:
    """Let the fake exit, then advance to its restart; the delay the supervisor chose."""
    fake.returncode = code
    sup.tick()
    before, count = clock.now, len(fake.starts)
    while len(fake.starts) == count:
        clock.now += 0.25
        sup.tick()
        assert clock.now - before < 100, "never restarted"
    return fake.starts[-1] - before


def test_delays_double_up_to_the_cap_and_say_who_and_how(tmp_path: Path) -> None:
    sup, fake, clock, lines, gave_up = supervisor(tmp_path)
    delays = [crash_and_restart(sup, fake, clock) for _ in range(4)]
    assert delays == [1.0, 2.0, 4.0, 4.0]
    assert not gave_up and sup.failure is None
    assert (
        f"relay exited with code 1 (log: {tmp_path / 'relay.log'}); restarting it in 1 s"
        in (lines[0])
    )
    assert "relay restarted" in lines[1]
    sup.tick()
    assert "relay is back" in lines[-1]
    assert "--- veil up: restarting relay ---" in fake.log_path.read_text()


def test_a_stable_run_starts_the_delays_over(tmp_path: Path) -> None:
    sup, fake, clock, _lines, _ = supervisor(tmp_path)
    assert [crash_and_restart(sup, fake, clock) for _ in range(3)] == [1.0, 2.0, 4.0]
    clock.now += POLICY.stable_s
    assert crash_and_restart(sup, fake, clock) == 1.0


def test_it_gives_up_once_on_a_service_that_keeps_exiting(tmp_path: Path) -> None:
    sup, fake, clock, lines, gave_up = supervisor(tmp_path)
    for _ in range(POLICY.max_restarts):
        crash_and_restart(sup, fake, clock, code=-signal.SIGKILL)
    fake.returncode = -signal.SIGKILL
    sup.tick()
    assert len(gave_up) == 1 and sup.failure == gave_up[0]
    assert gave_up[0].startswith("relay was killed by SIGKILL: 5 exits in 300 s")
    assert str(fake.log_path) in gave_up[0]
    assert "stopping the network" in lines[-1]
    clock.now += 100
    sup.tick()
    assert len(fake.starts) == POLICY.max_restarts and len(gave_up) == 1  # nothing more


def test_exits_older_than_the_window_are_forgotten(tmp_path: Path) -> None:
    policy = RestartPolicy(first_delay_s=1.0, max_restarts=2, window_s=30.0, stable_s=1000.0)
    sup, fake, clock, _lines, gave_up = supervisor(tmp_path, policy)
    for _ in range(6):
        crash_and_restart(sup, fake, clock)
        clock.now += 31
    assert not gave_up


def test_a_failed_start_counts_as_an_exit(tmp_path: Path) -> None:
    policy = RestartPolicy(first_delay_s=1.0, max_restarts=2)
    sup, fake, clock, lines, gave_up = supervisor(tmp_path, policy)
    fake.fail_start = OSError("port in use")
    fake.returncode = 1
    for _ in range(20):
        sup.tick()
        clock.now += 1
    assert len(fake.starts) == 2
    assert "relay could not be started again (port in use)" in gave_up[0]
    assert any("restarting it in 2 s" in line for line in lines)


def test_no_restart_once_held(tmp_path: Path) -> None:
    sup, fake, clock, lines, _ = supervisor(tmp_path)
    sup.hold()
    fake.returncode = 0
    clock.now += 10
    sup.tick()
    assert not fake.starts and not lines


def test_giving_up_interrupts_the_main_thread_in_a_blocking_read() -> None:
    """`veil up`'s main thread may sit in `input()` (the chat) when the supervisor gives up:
    the signal interrupts the read and NetworkFailed, which no `except Exception` catches,
    ends it. The same signal without a failure changes nothing."""
    old = signal.getsignal(signal.SIGUSR1)
    read_end, write_end = os.pipe()
    try:
        give_up = raise_in_main_thread()
        os.kill(os.getpid(), signal.SIGUSR1)  # from elsewhere, no failure: ignored
        timer = threading.Timer(0.3, give_up, args=("relay keeps exiting",))
        timer.start()
        started = time.monotonic()
        with pytest.raises(NetworkFailed, match="relay keeps exiting"):
            try:
                os.read(read_end, 1)
            except Exception:  # a chat loop's broad handler
                pytest.fail("NetworkFailed was caught as an Exception")
        assert time.monotonic() - started < 10
        timer.join()
    finally:
        signal.signal(signal.SIGUSR1, old)
        os.close(read_end)
        os.close(write_end)


def test_describe_exit() -> None:
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-signal.SIGTERM) == "was killed by SIGTERM"


# ---------------------------------------------------------------- real processes


@dataclass
class Script:
    """A `python -c` service under a lifeline, as `veil up` runs its own."""

    name: str
    code: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            self.proc = lifeline.popen([sys.executable, "-c", self.code], stdout=log)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def healthy(self) -> bool:
        return self.returncode is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


FAST = RestartPolicy(first_delay_s=0.1, max_delay_s=0.4, max_restarts=3, poll_s=0.05)


def wait_for(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_real_processes_restarted_and_given_up_on(tmp_path: Path) -> None:
    marker = tmp_path / "crashed-once"
    once = Script(
        "once",
        f"import pathlib, sys, time\np = pathlib.Path({str(marker)!r})\n"
        "if not p.exists():\n    p.touch()\n    sys.exit(3)\ntime.sleep(60)",
        tmp_path / "once.log",
    )
    always = Script("always", "import sys; sys.exit(1)", tmp_path / "always.log")
    lines: list[str] = []
    gave_up = threading.Event()
    sup = Supervisor(
        [once, always], report=lines.append, on_give_up=lambda _m: gave_up.set(), policy=FAST
    )
    once.start()
    always.start()
    sup.start()
    try:
        assert gave_up.wait(30), lines
        wait_for(lambda: any("once is back" in line for line in lines))
    finally:
        sup.hold()
        for script in (once, always):
            script.stop()
        sup.close()
    assert once.starts == 2 and once.returncode is not None
    assert any("once exited with code 3 (log: " in line for line in lines)
    assert always.starts == FAST.max_restarts + 1
    assert sup.failure is not None and "always exited with code 1: 4 exits" in sup.failure
    assert sum("restarting it in" in line for line in lines) == 1 + FAST.max_restarts


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux's")
def test_a_killed_parent_takes_every_child_and_grandchild_with_it(tmp_path: Path) -> None:
    """The parent runs a supervisor over three services that start children of their own
    (one ignores SIGTERM; one crashed once, so the supervisor thread started it again), then
    is SIGKILLed: every process under it is gone within the lifeline's grace period."""
    marker = tmp_path / "crashed-once"
    parent = f"""
import pathlib, sys, threading, time
from veil import lifeline
from veil.commands.supervise import RestartPolicy, Supervisor
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_supervise import Script
tmp = pathlib.Path({str(tmp_path)!r})
crash = "import pathlib, sys\\np = pathlib.Path({str(marker)!r})\\nif not p.exists():\\n"
crash += "    p.touch()\\n    sys.exit(2)\\n"
grandchildren = "import subprocess, sys, time\\nsubprocess.Popen(['sleep', '300'])\\n"
grandchildren += "subprocess.Popen(['sh', '-c', 'trap \\"\\" TERM; sleep 301'])\\ntime.sleep(300)"
services = [Script(n, c + grandchildren, tmp / f"{{n}}.log") for n, c in
            (("a", ""), ("b", "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"),
             ("c", crash))]
for s in services:
    s.start()
sup = Supervisor(services, report=print, on_give_up=print,
                 policy=RestartPolicy(first_delay_s=0.1, poll_s=0.05)).start()
while services[2].starts < 2:
    time.sleep(0.05)
print("ready", flush=True)
time.sleep(300)
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "ready":
                break
        else:
            pytest.fail("the parent did not get ready")
        # 3 lifelines, 3 services, and under each service a `sleep` and a `sh` (or its sleep)
        wait_for(lambda: sum(comm(p) == "sleep" for p in descendants(proc.pid)) == 6)
        tree = descendants(proc.pid)
        assert len(tree) >= 12
        proc.kill()
        proc.wait()
        wait_for(lambda: not (tree & running()), timeout=lifeline.GRACE_S + 5)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def running() -> set[int]:
    """Every live process (zombies excepted)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z":
                pids.add(int(entry.name))
    return pids


def comm(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""
