"""Typed errors of anonymous credits: blind RSA (RFC 9474) and Privacy Pass tokens (RFC 9578).

```
IdentityError
 └─ CreditError                  check: the step or field that failed
     ├─ CreditMalformed          bytes that do not follow the format (length, type, key encoding)
     ├─ CreditSignatureInvalid   a token or finalized signature that does not verify
     └─ BlindingFailed           a message the protocol cannot blind, or a signer's faulty output
```
Messages say which check failed; they never carry keys, nonces or token bytes.
"""

from __future__ import annotations

from veil.identity.errors import IdentityError

__all__ = ["BlindingFailed", "CreditError", "CreditMalformed", "CreditSignatureInvalid"]


class CreditError(IdentityError):
    """A blind signature or token was refused."""

    default_check = "credit"


class CreditMalformed(CreditError):
    """The bytes do not follow RFC 9474 / RFC 9578; `check` names the field."""


class CreditSignatureInvalid(CreditError):
    """The RSASSA-PSS signature does not verify under the issuer key."""

    default_check = "signature"


class BlindingFailed(CreditError):
    """The message is not invertible mod n, or BlindSign's result fails its own check (a fault)."""

    default_check = "blinding"
