"""What every long-running Veil process does first: leave a trace when it crashes, and keep
Python's recursion limit where the C stack can bear it.

py_ecc (imported through the Ethereum libraries) raises the interpreter's recursion limit to
100,000 at import. With that limit, any recursive parser (C JSON decoder, pydantic) can run
the C stack out on hostile input and kill the process with a segmentation fault and no log
line. Veil bounds the depth of every outside JSON document before parsing; this is the
second wall. faulthandler prints the Python stack of every thread on a fatal signal, into the
service's stderr (its log file under `veil up`).
"""

from __future__ import annotations

import contextlib
import faulthandler

from veil.wire.boundedjson import cap_recursion_limit

__all__ = ["harden_process"]


def harden_process() -> None:
    """Enable faulthandler and cap the recursion limit (after importing py_ecc, so that a
    later lazy import cannot raise it again)."""
    faulthandler.enable()
    with contextlib.suppress(ImportError):
        import py_ecc  # noqa: F401  (it raises the limit at import: let it, now)
    cap_recursion_limit()
