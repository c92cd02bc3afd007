"""Typed errors of the wire layer, each mapped to the HTTP answer a gateway gives for it.

```
VeilError
 └─ WireError                 (code, http_status, problem_type)
     ├─ Malformed             bytes that do not parse as the format says
     │   └─ Truncated         a message or chunk stream that ends before its end
     ├─ MessageTooLarge       over a configured size limit
     ├─ UnknownKeyId          no key with that id: the client must refetch the key list
     ├─ UnsupportedSuite      a KEM / KDF / AEAD this side does not implement
     ├─ DecryptionFailed      authentication of a sealed message or chunk failed
     └─ ReplayedRequest       an encapsulated request already seen (gateway policy)
```
Errors never carry plaintext: their messages say what was wrong, not what was inside.
"""

from __future__ import annotations

from typing import ClassVar

from veil.errors import VeilError

__all__ = [
    "OHTTP_KEY_PROBLEM",
    "PROBLEM_PREFIX",
    "DecryptionFailed",
    "Malformed",
    "MessageTooLarge",
    "ReplayedRequest",
    "Truncated",
    "UnknownKeyId",
    "UnsupportedSuite",
    "WireError",
    "error_for_problem_type",
]

# RFC 9458 section 5.3: the problem type that tells a client to refetch the key configuration.
OHTTP_KEY_PROBLEM = "https://iana.org/assignments/http-problem-types#ohttp-key"
# Veil's own problem types; a client recognises them by this prefix.
PROBLEM_PREFIX = "urn:veil:problem:"


class WireError(VeilError):
    """A message on the wire was refused; `http_status`/`problem_type` say how a gateway answers."""

    code: ClassVar[str] = "wire-error"
    http_status: ClassVar[int] = 400

    @property
    def problem_type(self) -> str:
        return PROBLEM_PREFIX + self.code

    def is_key_error(self) -> bool:
        """True where refetching the key list may help."""
        return False


class Malformed(WireError):
    """The bytes do not follow the format (truncated, bad length, bad field, trailing data)."""

    code = "malformed"


class Truncated(Malformed):
    """The message or chunk stream ended early (no final chunk): it may have been cut in transit."""

    code = "truncated"


class MessageTooLarge(WireError):
    """A message, section, field count, body or chunk is over its configured limit."""

    code = "too-large"
    http_status = 413


class UnknownKeyId(WireError):
    """The request names a key id the gateway does not hold (rotated out, or never existed)."""

    code = "unknown-key"

    @property
    def problem_type(self) -> str:
        return OHTTP_KEY_PROBLEM

    def is_key_error(self) -> bool:
        return True


class UnsupportedSuite(WireError):
    """The KEM, KDF or AEAD id is not one this implementation (or this key) supports."""

    code = "unsupported-suite"

    def is_key_error(self) -> bool:
        return True


class DecryptionFailed(WireError):
    """AEAD authentication or KEM decapsulation failed: bytes were changed or the key is wrong."""

    code = "decryption-failed"


class ReplayedRequest(WireError):
    """The gateway has already accepted an encapsulated request with this encapsulated key."""

    code = "replayed"


_BY_PROBLEM: dict[str, type[WireError]] = {
    OHTTP_KEY_PROBLEM: UnknownKeyId,
    **{
        PROBLEM_PREFIX + cls.code: cls
        for cls in (
            Malformed,
            Truncated,
            MessageTooLarge,
            UnsupportedSuite,
            DecryptionFailed,
            ReplayedRequest,
        )
    },
}


def error_for_problem_type(problem_type: str) -> type[WireError] | None:
    """The error class a gateway's problem type stands for, or None if it is not a wire error."""
    return _BY_PROBLEM.get(problem_type)
