"""Bytes on the wire: Binary HTTP (RFC 9292), Oblivious HTTP (RFC 9458, chunked draft), problems.

The bottom room: it imports only `veil.errors` and libraries (pyhpke, cryptography).
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
