"""Typed errors of node identity: keystores, descriptors and receipts.

```
VeilError
 └─ IdentityError                 check: the name of the check that failed
     ├─ KeystoreError
     │   ├─ KeystoreUnreadable    missing, unreadable, not a keystore, wrong address inside
     │   ├─ KeystorePermissions   readable by group or others, or owned by another user
     │   └─ KeystoreLocked        encrypted, and the passphrase is missing or wrong
     ├─ DescriptorError
     │   ├─ DescriptorMalformed   bytes or a field that do not follow the format (check: field)
     │   ├─ DescriptorSignatureInvalid   not signed by the address it names
     │   └─ DescriptorExpired     outside [issued_at, expires_at] at the given time
     └─ ReceiptError
         ├─ ReceiptMalformed      a receipt field that does not follow the format
         ├─ ReceiptSignatureInvalid      bad signature, or signed by another node
         └─ ReceiptMismatch       signed, but not over this request / answer / model
```
Messages say which check failed and why; they never carry keys, prompts or answers.
"""

from __future__ import annotations

from typing import ClassVar

from veil.errors import VeilError

__all__ = [
    "DescriptorError",
    "DescriptorExpired",
    "DescriptorMalformed",
    "DescriptorSignatureInvalid",
    "IdentityError",
    "KeystoreError",
    "KeystoreLocked",
    "KeystorePermissions",
    "KeystoreUnreadable",
    "ReceiptError",
    "ReceiptMalformed",
    "ReceiptMismatch",
    "ReceiptSignatureInvalid",
]


class IdentityError(VeilError):
    """Base of identity errors; `check` names the check that failed (a field or a step)."""

    default_check: ClassVar[str] = "identity"

    def __init__(self, message: str, *, check: str | None = None) -> None:
        super().__init__(message)
        self.check = check or self.default_check


class KeystoreError(IdentityError):
    """The node's keystore cannot be used."""

    default_check = "keystore"


class KeystoreUnreadable(KeystoreError):
    """Missing, unreadable, not JSON, not a keystore, or its key does not match its address."""


class KeystorePermissions(KeystoreError):
    """Group or others may read the keystore (or another user owns it): refused, like ssh does."""

    default_check = "keystore.permissions"


class KeystoreLocked(KeystoreError):
    """The keystore is encrypted and no passphrase, or the wrong one, was given."""

    default_check = "keystore.passphrase"


class DescriptorError(IdentityError):
    """A node descriptor was refused."""

    default_check = "descriptor"


class DescriptorMalformed(DescriptorError):
    """The descriptor does not parse; `check` names the field (e.g. `descriptor.ohttp_keys`)."""


class DescriptorSignatureInvalid(DescriptorError):
    """The signature does not recover to the descriptor's own address."""

    default_check = "signature"


class DescriptorExpired(DescriptorError):
    """The descriptor is not valid at the given time (expired, or issued in the future)."""

    default_check = "validity"


class ReceiptError(IdentityError):
    """A receipt was refused: the answer it came with must not be trusted."""

    default_check = "receipt"


class ReceiptMalformed(ReceiptError):
    """A receipt field does not follow the format; `check` names it."""


class ReceiptSignatureInvalid(ReceiptError):
    """The signature is invalid, or recovers to a node other than the expected one."""

    default_check = "signature"


class ReceiptMismatch(ReceiptError):
    """Validly signed, but over another request, answer or model; `check` names the field."""
