"""Bytes on the wire: Binary HTTP (RFC 9292), Oblivious HTTP (RFC 9458, chunked draft), problems,
and the OpenAI chat-completions shapes (`veil.wire.chat`).

The bottom room: it imports only `veil.errors` and libraries (pyhpke, cryptography, pydantic).
"""

from veil.wire.errors import (
    DecryptionFailed,
    Malformed,
    MessageTooLarge,
    ReplayedRequest,
    Truncated,
    UnknownKeyId,
    UnsupportedSuite,
    WireError,
)

__all__ = [
    "DecryptionFailed",
    "Malformed",
    "MessageTooLarge",
    "ReplayedRequest",
    "Truncated",
    "UnknownKeyId",
    "UnsupportedSuite",
    "WireError",
]
