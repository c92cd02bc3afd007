"""FakeUpstream: a raw-socket OpenAI-style streaming server that misbehaves on demand.

Written on plain sockets (not an HTTP framework) so a test can make it do what a framework
would not: close the connection mid-answer, go silent, send an endless line. It records the
headers and bodies it received, so a test can check what the node forwards.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Seen:
    headers: dict[str, str]
    body: dict


@dataclass
class FakeUpstream:
    """`mode`: "ok" (streams `pieces`), "500", "hang" (silent after the headers), "die" (closes
    the connection after two pieces), "long-line" (one endless data line)."""

    mode: str = "ok"
    pieces: tuple[str, ...] = ("Hello", " there", ",", " friend", ".")
    delay_s: float = 0.0  # between pieces
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the node hung up: nothing more to send
            self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            raw = b""
            while b"\r\n\r\n" not in raw:
                raw += conn.recv(65536)
            head, _, rest = raw.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(rest) < length:
                rest += conn.recv(65536)
            self.seen.append(Seen(headers, json.loads(rest[:length])))
            if self.mode == "500":
                body = b'{"error":{"message":"boom"}}'
                conn.sendall(
                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
                )
                return
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
            )
            if self.mode == "hang":
                self._stop.wait(30)
                return
            if self.mode == "long-line":
                conn.sendall(b"data: " + b"x" * 200_000)
                self._stop.wait(30)
                return
            for i, piece in enumerate(self.pieces):
                if self.mode == "die" and i == 2:
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                self._send(conn, {"choices": [{"index": 0, "delta": {"content": piece}}]})
                time.sleep(self.delay_s)
            self._send(conn, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            self._send(conn, {"choices": [], "usage": {"completion_tokens": len(self.pieces)}})
            with contextlib.suppress(OSError):
                conn.sendall(b"data: [DONE]\n\n")

    @staticmethod
    def _send(conn: socket.socket, event: dict) -> None:
        conn.sendall(b"data: " + json.dumps(event).encode() + b"\n\n")
