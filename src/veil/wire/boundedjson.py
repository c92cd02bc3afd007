"""JSON from outside, bounded before it is decoded.

Python's C JSON decoder recurses once per nesting level. A dependency of the Ethereum
libraries (py_ecc) raises the interpreter's recursion limit to 100,000 at import, so a few
hundred kilobytes of `[[[[...` would overflow the C stack and kill the process with no trace.
Every JSON document that comes from the network or the chain is therefore checked for size and
nesting depth first, by a scan that does not recurse, and only then decoded.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from veil.wire.errors import Malformed, MessageTooLarge

__all__ = [
    "MAX_JSON_DEPTH",
    "SAFE_RECURSION_LIMIT",
    "cap_recursion_limit",
    "check_depth",
    "loads",
]

# Deeper than any document Veil sends or accepts (a chat request nests about 5 levels).
MAX_JSON_DEPTH = 32
# CPython's own default: deep enough for every library Veil uses, shallow enough for the C stack.
SAFE_RECURSION_LIMIT = 1000

# A string, or an unterminated one up to the end: the match never fails once a quote opens,
# so the scan never backtracks (failing matches from every quote made it quadratic).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def check_depth(data: bytes | str, *, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when JSON text nests at most `limit` deep (brackets inside strings don't count)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = 0
    for c in brackets:
        depth += 1 if c in b"[{" else -1
        if depth > limit:
            return False
    return True


def loads(
    data: bytes | str, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH, what: str = "JSON"
) -> Any:
    """Decode untrusted JSON: `MessageTooLarge` over `max_bytes`, `Malformed` when nested
    deeper than `max_depth` or not JSON (the message names `what`, never the content)."""
    if len(data) > max_bytes:
        raise MessageTooLarge(f"{what} is larger than {max_bytes} bytes")
    if not check_depth(data, limit=max_depth):
        raise Malformed(f"{what} nests deeper than {max_depth} levels")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise Malformed(f"{what} is not valid JSON ({type(err).__name__})") from None


def cap_recursion_limit(limit: int = SAFE_RECURSION_LIMIT) -> int:
    """Undo a dependency's raised recursion limit (py_ecc sets 100,000); returns the old one.

    Services call this once their imports are done, so that no recursion, in any parser, can
    run the C stack out before Python's own RecursionError stops it.
    """
    old = sys.getrecursionlimit()
    if old > limit:
        sys.setrecursionlimit(limit)
    return old
