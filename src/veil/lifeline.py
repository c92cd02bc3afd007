"""Child processes that die with their parent, with everything they started.

A program killed with SIGKILL cannot stop its children, so `veil up` used to leave anvil and
its nodes running when it was killed. Each child now runs under a lifeline: a small Python
process (this file, run as a script with only the standard library) between the parent and
the real command.

* The lifeline asks Linux for a parent-death signal (`prctl(PR_SET_PDEATHSIG, SIGTERM)`) and
  then checks that its parent is still the one that started it, so a parent that dies before
  the request cannot be missed. The signal fires when the *thread* that forked the lifeline
  ends: start children from a thread that lives as long as they should (the main thread, or
  a long-lived supervisor thread).
* The command runs in its own process group, so the lifeline can stop its whole tree (a
  node's MPC session workers, say): on SIGTERM or SIGHUP (or its parent's death) it sends
  SIGTERM to the group, then SIGKILL after `GRACE_S`. When the command exits on its own, the
  lifeline ends what it left in the group in the same way and exits with the command's status
  (a command killed by a signal makes the lifeline die of the same signal), so a caller sees
  the command's own exit status.
* The command has a parent-death signal too (SIGKILL, set between fork and exec, so it holds
  for binaries such as anvil): if the lifeline itself is killed, the command goes with it.
* The lifeline sets the umask to 077 before starting the command: every file the command
  creates is private to the user.

The lifeline runs in its own session (`start_new_session`): Ctrl-C in the parent's terminal
reaches the parent only, which then stops its children in its own order. Elsewhere than
Linux there is no parent-death signal; process groups and the umask still apply.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["GRACE_S", "command", "popen"]

GRACE_S = 5.0  # from SIGTERM to SIGKILL, for the command's process group
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_POLL_S = 0.05


def command(argv: Sequence[str]) -> list[str]:
    """`argv` under a lifeline tied to this process: what to hand to `subprocess.Popen`
    (with `start_new_session=True`; `popen` does both)."""
    # -I -S: no user site, no PYTHON* variables, no site-packages: the standard library only
    return [sys.executable, "-I", "-S", __file__, str(os.getpid()), "--", *argv]


def popen(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start `argv` under a lifeline, in a session of its own. The returned process is the
    lifeline; it exits with the command's status."""
    return subprocess.Popen(command(argv), start_new_session=True, **kwargs)


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _die_with(parent: int, sig: int) -> bool:
    """Ask for `sig` when the parent dies; False if `parent` is already gone (we have been
    re-parented). Elsewhere than Linux, True: there is no such signal to ask for."""
    if sys.platform.startswith("linux"):
        _prctl(_PR_SET_PDEATHSIG, sig)
    return os.getppid() == parent


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the process group; False once the group is empty."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # only zombies or foreign processes are left
        return False
    return True


def _reap() -> None:
    """Collect exited processes adopted as subreaper (they would count as group members)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _end_group(pgid: int, grace: float) -> None:
    """SIGTERM to the group, SIGKILL to what is left after `grace` seconds."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap()
        if not _signal_group(pgid, 0):
            return
        time.sleep(_POLL_S)
    _signal_group(pgid, signal.SIGKILL)
    for _ in range(int(1 / _POLL_S)):
        _reap()
        if not _signal_group(pgid, 0):
            return
        time.sleep(_POLL_S)


def _exit_like(returncode: int) -> None:
    """Exit with the command's status: its code, or death by the signal that killed it."""
    if returncode < 0:
        sig = -returncode
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # its core, if any, is not ours
        except (ImportError, ValueError, OSError):
            pass
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        time.sleep(1)  # a signal that does not end a process (SIGCHLD...) falls through
        os._exit(128 + sig)
    os._exit(returncode)


def _run(parent: int, argv: list[str]) -> int:
    """The lifeline itself: start `argv`, watch it and the parent, end its group."""
    os.umask(0o077)
    stop: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stop.append(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    if not _die_with(parent, signal.SIGTERM):
        return 1  # the parent died before we could ask to die with it
    if sys.platform.startswith("linux"):
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)  # orphans of the command come to us, to be reaped
    me = os.getpid()

    def in_child() -> None:
        # between fork and exec: this process has one thread, so this is safe here
        os.setpgid(0, 0)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        if not _die_with(me, signal.SIGKILL):
            os._exit(1)

    try:
        child = subprocess.Popen(argv, preexec_fn=in_child)  # one thread: preexec_fn is safe
    except OSError as exc:
        print(f"lifeline: cannot start {argv[0]}: {exc}", file=sys.stderr, flush=True)
        return 127
    killed_at: float | None = None
    while (code := child.poll()) is None:
        if stop and killed_at is None:
            _signal_group(child.pid, signal.SIGTERM)
            killed_at = time.monotonic()
        elif killed_at is not None and time.monotonic() - killed_at > GRACE_S:
            _signal_group(child.pid, signal.SIGKILL)
        time.sleep(_POLL_S)
    left = GRACE_S if killed_at is None else GRACE_S - (time.monotonic() - killed_at)
    _end_group(child.pid, max(0.0, left))
    _reap()
    return code


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit("usage: lifeline.py PARENT_PID -- COMMAND [ARG...]")
    _exit_like(_run(int(sys.argv[1]), sys.argv[3:]))
