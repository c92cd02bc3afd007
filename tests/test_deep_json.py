"""Deeply nested JSON from outside is refused with each surface's typed error, never decoded.

The Ethereum libraries (py_ecc) raise Python's recursion limit to 100,000, so an unbounded
`json.loads` of `[[[[...` overflows the C stack: a segfault. Every parser of outside JSON
bounds depth first; this runs each one with the recursion limit as high as py_ecc sets it.
"""

from __future__ import annotations

import base64
import struct
import sys
from collections.abc import Callable, Iterator

import pytest

from veil.chain.errors import InvalidTicket
from veil.chain.payment import PaymentTicket, TicketParams
from veil.identity.errors import IdentityError
from veil.mpc.channel import MAGIC, decode_frame
from veil.mpc.errors import ProtocolViolation
from veil.wire.chat import ChatRequestInvalid, parse_chat_request
from veil.wire.problem import parse_problem

DEPTH = 50_000


def _deep(kind: str) -> bytes:
    if kind == "arrays":
        return b"[" * DEPTH + b"]" * DEPTH
    return b'{"a":' * DEPTH + b"1" + b"}" * DEPTH


@pytest.fixture(autouse=True)
def _recursion_limit_as_py_ecc_sets_it() -> Iterator[None]:
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    yield
    sys.setrecursionlimit(old)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _frame(header: bytes) -> bytes:
    return MAGIC + struct.pack(">I", len(header)) + header


SURFACES: dict[str, tuple[Callable[[bytes], object], type[Exception]]] = {
    "chat request": (parse_chat_request, ChatRequestInvalid),
    "ticket params": (TicketParams.parse, InvalidTicket),
    "ticket header": (lambda raw: PaymentTicket.from_header(_b64(raw)), InvalidTicket),
    "mpc frame": (lambda raw: decode_frame(_frame(raw)), ProtocolViolation),
}


@pytest.mark.parametrize("kind", ["arrays", "objects"])
@pytest.mark.parametrize("surface", sorted(SURFACES))
def test_deep_nesting_is_a_typed_refusal(surface: str, kind: str) -> None:
    parse, error = SURFACES[surface]
    with pytest.raises(error):
        parse(_deep(kind)[:1500] if surface.startswith("ticket") else _deep(kind))


@pytest.mark.parametrize("kind", ["arrays", "objects"])
def test_a_deep_problem_body_is_not_a_problem(kind: str) -> None:
    assert parse_problem(_deep(kind)[:60_000]) == ("", "")


@pytest.mark.parametrize("kind", ["arrays", "objects"])
def test_descriptor_refuses_deep_nesting(kind: str) -> None:
    from veil.identity import SignedDescriptor

    with pytest.raises(IdentityError):
        SignedDescriptor.parse(_deep(kind)[:30_000])


@pytest.mark.parametrize("kind", ["arrays", "objects"])
def test_a_chain_rpc_answering_deep_nesting_is_unavailable_not_a_crash(kind: str) -> None:
    import http.server
    import threading

    from veil.chain.errors import ChainUnavailable
    from veil.chain.transact import connect

    body = b'{"jsonrpc":"2.0","id":0,"result":' + _deep(kind) + b"}"

    class Deep(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Deep)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ChainUnavailable, match="nests deeper"):
            connect(f"http://127.0.0.1:{server.server_address[1]}", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
