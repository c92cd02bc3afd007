"""Coverage-guided fuzzing of the same parsers with atheris (libFuzzer), for long runs.

    pip install atheris   # not a project dependency
    python tests/fuzz/atheris_run.py TARGET [libFuzzer options, e.g. -max_total_time=60]
    python tests/fuzz/atheris_run.py --list

Each target feeds raw bytes to one parser and lets only that parser's typed errors through;
any other exception is a crash that atheris reports with its input. The corpus starts from
valid messages built by the real encoders (written to a temporary directory). Parsers run
under the recursion limit a service sets (`cap_recursion_limit`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["veil"]):
    from veil.chain.errors import InvalidTicket
    from veil.chain.payment import PaymentTicket, TicketParams
    from veil.identity import DescriptorError, Receipt, ReceiptError, SignedDescriptor
    from veil.mpc.channel import decode_frame, encode_frame, recv_frame
    from veil.mpc.errors import ProtocolViolation
    from veil.wire import bhttp, ohttp
    from veil.wire.boundedjson import cap_recursion_limit
    from veil.wire.chat import ChatRequestInvalid, parse_chat_request
    from veil.wire.errors import WireError
    from veil.wire.problem import parse_problem

KEYS = {1: ohttp.KeyPair(1, bytes(range(32)))}
ADDRESS = "0x5B38Da6a701c568545dCfcB03FcB875f56beddC4"


def _stream(data: bytes, feed: Callable[[bytes], object], close: Callable[[], object]) -> None:
    """Feed `data` in pieces whose sizes come from its first byte, then close."""
    step = 1 + (data[0] if data else 0) % 64
    for i in range(1, len(data), step):
        feed(data[i : i + step])
    close()


def _bhttp_stream(data: bytes) -> None:
    parser = bhttp.MessageParser("response" if data[:1] == b"\x01" else "request")
    _stream(data[1:], parser.feed, parser.close)


def _chunked_response(data: bytes) -> None:
    _, opener = ohttp.encapsulate_chunked_request(KEYS[1].config, b"q", ephemeral_secret=bytes(32))
    _stream(data, opener.feed, opener.close)


def _response(data: bytes) -> None:
    _, opener = ohttp.encapsulate_request(KEYS[1].config, b"q", ephemeral_secret=bytes(32))
    opener.open(data)


def _mpc_socket(data: bytes) -> None:
    writer, reader = socket.socketpair()
    with writer, reader:
        reader.settimeout(5)
        writer.sendall(data[: 128 * 1024])
        writer.shutdown(socket.SHUT_WR)
        recv_frame(reader)


def _problem(data: bytes) -> None:
    kind, text = parse_problem(data)
    assert isinstance(kind, str) and isinstance(text, str)


_WIRE = (WireError,)
# name -> (parser of bytes, the errors it may raise, seeds)
TARGETS: dict[str, tuple[Callable[[bytes], object], tuple[type[Exception], ...], list[bytes]]] = {
    "bhttp-request": (
        bhttp.decode_request,
        _WIRE,
        [bhttp.encode_request(bhttp.Request("GET", "https", "a", "/", ((b"a", b"b"),), b"x"))],
    ),
    "bhttp-response": (
        bhttp.decode_response,
        _WIRE,
        [bhttp.encode_response(bhttp.Response(200, ((b"a", b"b"),), b"x"), indeterminate=True)],
    ),
    "bhttp-stream": (
        _bhttp_stream,
        _WIRE,
        [b"\x07" + bhttp.encode_request(bhttp.Request("GET", "h", "a", "/"))],
    ),
    "ohttp-keys": (ohttp.decode_key_configs, _WIRE, [ohttp.encode_key_configs([KEYS[1].config])]),
    "ohttp-request": (
        lambda d: ohttp.decapsulate_request(KEYS, d),
        _WIRE,
        [ohttp.encapsulate_request(KEYS[1].config, b"\x00\x03GET")[0]],
    ),
    "ohttp-chunked-request": (
        lambda d: ohttp.decapsulate_chunked_request(KEYS, d),
        _WIRE,
        [ohttp.encapsulate_chunked_request(KEYS[1].config, [b"a", b"bc"])[0]],
    ),
    "ohttp-response": (_response, _WIRE, [bytes(48)]),
    "ohttp-chunked-response": (
        _chunked_response,
        _WIRE,
        [b"\x10" + bytes(16) + b"\x11" + bytes(17)],
    ),
    "chat": (
        parse_chat_request,
        (ChatRequestInvalid,),
        [b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":["a"],"seed":1}'],
    ),
    "ticket-params": (
        TicketParams.parse,
        (InvalidTicket,),
        [TicketParams(ADDRESS, 1, 2**255, bytes(32), 10, 1, ADDRESS).encode()],
    ),
    "ticket-header": (
        lambda d: PaymentTicket.from_header(d.decode("latin-1")),
        (InvalidTicket,),
        [
            base64.urlsafe_b64encode(
                json.dumps(
                    {
                        "ticket": {
                            "recipient": ADDRESS,
                            "sender": ADDRESS,
                            "face_value": "1",
                            "win_prob": "2",
                            "sender_nonce": "3",
                            "recipient_rand_hash": "0x" + "00" * 32,
                            "expiry": 5,
                        },
                        "signature": "0x" + "00" * 65,
                    }
                ).encode()
            )
        ],
    ),
    "descriptor": (SignedDescriptor.parse, (DescriptorError,), []),
    "receipt": (
        Receipt.from_json,
        (ReceiptError,),
        [Receipt(ADDRESS, bytes(32), bytes(32), bytes(32), 1, 2, 3, bytes(32), bytes(65)).encode()],
    ),
    "mpc-frame": (decode_frame, (ProtocolViolation,), [encode_frame({"op": "x"}, [b"ab", b""])]),
    "mpc-socket": (
        _mpc_socket,
        (ProtocolViolation, ConnectionError),
        [encode_frame({"a": 1}, [b"x"])],
    ),
    "problem": (_problem, (), [b'{"type":"urn:veil:relay:x","title":"t","status":400}']),
}


def _descriptor_seed() -> bytes:
    from veil.identity import Descriptor, Evidence, ModelEntry

    body = Descriptor(
        ADDRESS,
        "http://node",
        ohttp.encode_key_configs([KEYS[1].config]),
        (ModelEntry("m", bytes(32)),),
        b"\x01",
        Evidence("dev", b"e"),
        1,
        2,
    )
    return SignedDescriptor(body, bytes(65)).encode()


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        print("targets:", " ".join(TARGETS))
        sys.exit(0 if "--list" in sys.argv else 2)
    name = sys.argv[1]
    parse, errors, seeds = TARGETS[name]
    if name == "descriptor":
        seeds = [_descriptor_seed()]

    def one_input(data: bytes) -> None:
        with contextlib.suppress(errors):
            parse(data)

    corpus = Path(tempfile.mkdtemp(prefix=f"veil-fuzz-{name}-"))
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i}").write_bytes(seed)
    cap_recursion_limit()
    atheris.Setup([sys.argv[0], *sys.argv[2:], str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
