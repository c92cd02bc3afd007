"""What attestation evidence must bind: defined once, used by producers and verifiers alike.

Hardware evidence carries 64 bytes of report data chosen by the software inside the enclave.
Veil fills them as

    report_data = binding_hash(address, ohttp_keys, model_hashes) || freshness_nonce

* `binding_hash` ties the evidence to the node account, to the exact `application/ohttp-keys`
  bytes the client will encrypt to, and to the weights it serves. A quote from the same machine
  over other keys (a relay or operator swapping keys) does not match.
* the nonce ties it to a time: for evidence inside a descriptor it is derived from the
  descriptor's `issued_at`, so an old quote cannot be re-dated; a client that challenges a node
  directly uses its own 32 random bytes instead.

Encodings are length-prefixed and domain-separated, so no two different inputs hash alike.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

__all__ = [
    "BINDING_LABEL",
    "FRESHNESS_LABEL",
    "REPORT_DATA_LEN",
    "binding_hash",
    "freshness_nonce",
    "report_data",
]

BINDING_LABEL = b"veil/key-binding/v1\x00"
FRESHNESS_LABEL = b"veil/freshness/v1\x00"
REPORT_DATA_LEN = 64


def binding_hash(address: str, ohttp_keys: bytes, model_hashes: Iterable[bytes]) -> bytes:
    """sha256 over the node address (20 bytes), its key config list and its model hashes.

    Model hashes are sorted and de-duplicated, so their order in the descriptor does not matter.
    """
    addr = bytes.fromhex(address.removeprefix("0x"))
    if len(addr) != 20:
        raise ValueError("address must be 20 bytes")
    hashes = sorted(set(model_hashes))
    if any(len(h) != 32 for h in hashes):
        raise ValueError("model hashes must be 32 bytes each")
    h = hashlib.sha256(BINDING_LABEL)
    h.update(addr)
    h.update(struct.pack(">I", len(ohttp_keys)))
    h.update(ohttp_keys)
    h.update(struct.pack(">I", len(hashes)))
    for model_hash in hashes:
        h.update(model_hash)
    return h.digest()


def freshness_nonce(issued_at: int) -> bytes:
    """The nonce of descriptor evidence: sha256 over the label and `issued_at` (8 bytes BE)."""
    return hashlib.sha256(FRESHNESS_LABEL + struct.pack(">Q", issued_at)).digest()


def report_data(
    address: str,
    ohttp_keys: bytes,
    model_hashes: Iterable[bytes],
    *,
    issued_at: int | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """The 64 report-data bytes: binding hash, then the nonce (given, or from `issued_at`)."""
    if (issued_at is None) == (nonce is None):
        raise ValueError("give exactly one of issued_at and nonce")
    if nonce is None:
        nonce = freshness_nonce(issued_at)  # type: ignore[arg-type]
    if len(nonce) != 32:
        raise ValueError("nonce must be 32 bytes")
    return binding_hash(address, ohttp_keys, model_hashes) + nonce
