"""Veil's HTTP vocabulary: paths, media types, headers, extension names, the capped body
reader and the OpenAI-style error, defined once for every service and client.

Everything above the wire room (node, relay, client gateway, the CLI) names these constants
instead of spelling the strings, so a header the gateway sets is the header the CLI reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from veil.errors import VeilError
from veil.wire.errors import PROBLEM_PREFIX, MessageTooLarge

__all__ = [
    "ATTESTATION_HEADER",
    "CHAT_PATH",
    "CREDITS_PATH",
    "DESCRIPTOR_PATH",
    "INVALID_BASE_URL",
    "MEDIA_DESCRIPTOR",
    "MEDIA_JSON",
    "MEDIA_MPC",
    "MEDIA_SSE",
    "MEDIA_TICKET_PARAMS",
    "MEDIA_TOKEN_REQUEST",
    "MEDIA_TOKEN_RESPONSE",
    "MODELS_PATH",
    "MODE_HEADER",
    "MPC_PATH",
    "MPC_PROTOCOL_HEADER",
    "NODES_HEADER",
    "NODE_HEADER",
    "PAYMENT_HEADER",
    "PROBLEM_PREFIX",
    "RECEIPT_HEADER",
    "RECEIPT_ID_HEADER",
    "REQUEST_DIGEST_EXTENSION",
    "REQUEST_DIGEST_HEADER",
    "TICKET_HEADER",
    "TICKET_ID_EXTENSION",
    "TICKET_ID_HEADER",
    "TICKET_PARAMS_HEADER",
    "TICKET_PARAMS_PATH",
    "TOKENS_HEADER",
    "TOKEN_KEYS_PATH",
    "VERIFICATION_HEADER",
    "OpenAIError",
    "error_body",
    "read_capped",
]

# -- paths (a node's API; the gateway serves the same OpenAI ones)
CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
DESCRIPTOR_PATH = "/.well-known/veil-node"  # the node's signed descriptor
TICKET_PARAMS_PATH = "/.well-known/veil-ticket-params"  # the node's current ticket offer
MPC_PATH = "/v1/mpc"  # where a node that hosts an MPC party takes frames
CREDITS_PATH = "/v1/credits"  # buy a batch of RFC 9578 tokens (TokenRequests in, one ticket)
TOKEN_KEYS_PATH = "/.well-known/veil-token-keys"  # the node's accepted token keys per epoch

# -- media types
MEDIA_JSON = "application/json"
MEDIA_SSE = "text/event-stream"
MEDIA_DESCRIPTOR = "application/vnd.veil.node-descriptor+json"
MEDIA_TICKET_PARAMS = "application/json"
MEDIA_MPC = "application/x-veil-mpc"  # an HTTP body that is exactly one MPC frame
MEDIA_TOKEN_REQUEST = "application/private-token-request"  # RFC 9578; Veil: several, joined
MEDIA_TOKEN_RESPONSE = "application/private-token-response"  # RFC 9578; Veil: several, joined

# -- headers inside the sealed request (client -> node)
TICKET_HEADER = "x-veil-ticket"
TOKENS_HEADER = "x-veil-tokens"  # RFC 9578 tokens paying instead of a ticket (base64url, ",")
# -- headers of a node's answer
TICKET_PARAMS_HEADER = "x-veil-ticket-params"
REQUEST_DIGEST_HEADER = "x-veil-request-digest"  # never believed from a client
# -- headers of the local gateway's answers (read back by `veil chat`)
MODE_HEADER = "x-veil-mode"  # also a request header: the privacy mode
NODE_HEADER = "x-veil-node"
NODES_HEADER = "x-veil-nodes"  # the MPC parties, comma-separated
MPC_PROTOCOL_HEADER = "x-veil-mpc-protocol"
ATTESTATION_HEADER = "x-veil-attestation"
VERIFICATION_HEADER = "x-veil-verification"
RECEIPT_HEADER = "x-veil-receipt"
RECEIPT_ID_HEADER = "x-veil-receipt-id"
TICKET_ID_HEADER = "x-veil-ticket-id"
# How the gateway paid for an answer: "ticket 0x<ticket id>" or "tokens <n> 0x<payment id>"
# (the id the receipt names, checked).
PAYMENT_HEADER = "x-veil-payment"

# -- names in httpx / ASGI `extensions`
REQUEST_DIGEST_EXTENSION = "veil.request_digest"  # sha256 of the sealed request (bytes)
TICKET_ID_EXTENSION = "veil.ticket_id"  # the id of the ticket a request carries (bytes)

# Requests are sealed to a node; the outer host is never contacted. An `.invalid` name makes
# any misconfiguration that would send plaintext fail to resolve instead of leaking.
INVALID_BASE_URL = "http://node.veil.invalid/v1"


def error_body(
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class OpenAIError(VeilError):
    """An HTTP answer with an OpenAI-style error body; `headers` go on the answer."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        type_: str = "invalid_request_error",
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type_
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class _Streamed(Protocol):
    @property
    def headers(self) -> Mapping[str, str]: ...

    def stream(self) -> AsyncIterator[bytes]: ...


async def read_capped(request: _Streamed, limit: int) -> bytes:
    """The whole request body, or `MessageTooLarge` as soon as it passes `limit` bytes
    (a declared content-length over the limit is refused before anything is read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise MessageTooLarge(f"the request body exceeds {limit} bytes")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise MessageTooLarge(f"the request body exceeds {limit} bytes")
    return bytes(body)
