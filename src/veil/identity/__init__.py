"""Node identity: the account and its keystore, signed descriptors, evidence binding, receipts.

A bottom room: it imports only `veil.errors`, `veil.wire` and libraries (eth_account).
"""

from veil.identity.account import NodeIdentity
from veil.identity.binding import binding_hash, freshness_nonce, report_data
from veil.identity.descriptor import (
    DESCRIPTOR_PATH,
    MEDIA_DESCRIPTOR,
    Descriptor,
    Evidence,
    ModelEntry,
    MpcParty,
    SignedDescriptor,
    load_descriptor,
)
from veil.identity.errors import (
    DescriptorError,
    DescriptorExpired,
    DescriptorMalformed,
    DescriptorSignatureInvalid,
    IdentityError,
    KeystoreError,
    KeystoreLocked,
    KeystorePermissions,
    KeystoreUnreadable,
    ReceiptError,
    ReceiptMalformed,
    ReceiptMismatch,
    ReceiptSignatureInvalid,
)
from veil.identity.receipt import (
    DEFAULT_RECEIPT_DOMAIN,
    Receipt,
    ReceiptDomain,
    answer_digest,
    check_receipt,
    request_digest,
    sign_receipt,
    verify_receipt,
)

__all__ = [
    "DEFAULT_RECEIPT_DOMAIN",
    "DESCRIPTOR_PATH",
    "MEDIA_DESCRIPTOR",
    "Descriptor",
    "DescriptorError",
    "DescriptorExpired",
    "DescriptorMalformed",
    "DescriptorSignatureInvalid",
    "Evidence",
    "IdentityError",
    "KeystoreError",
    "KeystoreLocked",
    "KeystorePermissions",
    "KeystoreUnreadable",
    "ModelEntry",
    "MpcParty",
    "NodeIdentity",
    "Receipt",
    "ReceiptDomain",
    "ReceiptError",
    "ReceiptMalformed",
    "ReceiptMismatch",
    "ReceiptSignatureInvalid",
    "SignedDescriptor",
    "answer_digest",
    "binding_hash",
    "check_receipt",
    "freshness_nonce",
    "load_descriptor",
    "report_data",
    "request_digest",
    "sign_receipt",
    "verify_receipt",
]
