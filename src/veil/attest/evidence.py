"""Evidence kinds and the byte format of each (the `data` of a descriptor's `Evidence`).

| kind | hardware | data |
|---|---|---|
| `dev` | none | `{"isolation": "none", "report_data": "0x<64 bytes>"}` (signature only) |
| `tdx` | Intel TDX | a raw DCAP quote, or `{"quote": base64, "collateral": {...} or null}` |
| `nvidia-cc` | NVIDIA CC | reserved: no verifier yet, every policy refuses it |

Collateral inside TDX evidence is Intel-signed (checked against Intel's root CA like any
other), so a node may ship it and spare the client a PCCS lookup that would reveal its interest.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from veil.attest.errors import EvidenceMalformed
from veil.wire.boundedjson import check_depth

__all__ = [
    "HARDWARE_KINDS",
    "KIND_DEV",
    "KIND_NVIDIA",
    "KIND_TDX",
    "KNOWN_KINDS",
    "DevEvidence",
    "TdxEvidence",
]

KIND_DEV = "dev"
KIND_TDX = "tdx"
KIND_NVIDIA = "nvidia-cc"
HARDWARE_KINDS = frozenset({KIND_TDX, KIND_NVIDIA})
KNOWN_KINDS = frozenset({KIND_DEV, KIND_TDX, KIND_NVIDIA})
_MAX_QUOTE = 64 * 1024


def _json_object(data: bytes) -> dict[str, Any]:
    if not check_depth(data):
        raise EvidenceMalformed("evidence JSON is nested too deep")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise EvidenceMalformed("evidence is not JSON") from None
    if not isinstance(obj, dict):
        raise EvidenceMalformed("evidence is not a JSON object")
    return obj


@dataclass(frozen=True)
class DevEvidence:
    """Development evidence: the report data, vouched for by nothing but the node's key."""

    report_data: bytes

    def encode(self) -> bytes:
        body = {"isolation": "none", "report_data": "0x" + self.report_data.hex()}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> DevEvidence:
        obj = _json_object(data)
        if set(obj) != {"isolation", "report_data"} or obj["isolation"] != "none":
            raise EvidenceMalformed("dev evidence needs exactly isolation='none' and report_data")
        text = obj["report_data"]
        if not isinstance(text, str) or not text.startswith("0x") or len(text) != 130:
            raise EvidenceMalformed("dev report_data must be 64 bytes of 0x hex")
        try:
            return cls(bytes.fromhex(text[2:]))
        except ValueError:
            raise EvidenceMalformed("dev report_data is not hex") from None


@dataclass(frozen=True)
class TdxEvidence:
    """A TDX quote, with the collateral to check it when the node ships it."""

    quote: bytes
    collateral: str | None = None  # QuoteCollateralV3 JSON text (dcap-qvl's format)

    def encode(self) -> bytes:
        collateral = None if self.collateral is None else json.loads(self.collateral)
        body = {"quote": base64.b64encode(self.quote).decode(), "collateral": collateral}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> TdxEvidence:
        """A JSON container, or a raw binary quote (anything not starting with `{`)."""
        if not data:
            raise EvidenceMalformed("empty TDX evidence")
        if not data.startswith(b"{"):
            if len(data) > _MAX_QUOTE:
                raise EvidenceMalformed("quote is too large")
            return cls(bytes(data))
        obj = _json_object(data)
        if set(obj) != {"quote", "collateral"}:
            raise EvidenceMalformed("TDX evidence needs exactly the fields quote and collateral")
        try:
            quote = base64.b64decode(str(obj["quote"]).encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise EvidenceMalformed("TDX quote is not base64") from None
        if not quote or len(quote) > _MAX_QUOTE:
            raise EvidenceMalformed("TDX quote is empty or too large")
        collateral = obj["collateral"]
        if collateral is not None and not isinstance(collateral, dict):
            raise EvidenceMalformed("TDX collateral must be an object or null")
        return cls(quote, None if collateral is None else json.dumps(collateral))
