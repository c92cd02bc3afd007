"""The check that evidence binds a descriptor: its address, exact OHTTP keys, models and time.

The expected bytes are defined once, in `veil.identity.binding`; this compares them with what a
verifier found in the evidence, and says which half differs.
"""

from __future__ import annotations

import hmac

from veil.attest.errors import BindingMismatch
from veil.identity.binding import report_data
from veil.identity.descriptor import Descriptor

__all__ = ["check_binding", "expected_report_data"]


def expected_report_data(descriptor: Descriptor, *, nonce: bytes | None = None) -> bytes:
    """The 64 bytes evidence for this descriptor must carry (nonce from issued_at by default)."""
    if nonce is not None:
        return report_data(
            descriptor.address, descriptor.ohttp_keys, descriptor.model_hashes, nonce=nonce
        )
    return report_data(
        descriptor.address,
        descriptor.ohttp_keys,
        descriptor.model_hashes,
        issued_at=descriptor.issued_at,
    )


def check_binding(
    found: bytes | None, descriptor: Descriptor, *, nonce: bytes | None = None
) -> None:
    """`BindingMismatch` unless `found` is exactly the report data the descriptor implies."""
    if found is None or len(found) != 64:
        raise BindingMismatch("the evidence carries no 64-byte report data")
    expected = expected_report_data(descriptor, nonce=nonce)
    if not hmac.compare_digest(found[:32], expected[:32]):
        raise BindingMismatch(
            "the evidence binds other keys, models or another address than the descriptor's"
        )
    if not hmac.compare_digest(found[32:], expected[32:]):
        raise BindingMismatch(
            "the evidence's freshness nonce does not match the descriptor's issue time",
            check="freshness",
        )
