"""The node's side: produce evidence over the binding report data, and issue its descriptor.

* `DevProducer`: no hardware; logs a warning every time, so a dev node never passes unnoticed.
* `TdxProducer`: inside an Intel TDX guest, asks the kernel for a quote through configfs-tsm
  (`/sys/kernel/config/tsm/report`, Linux 6.7+): make an entry, write the 64 report-data bytes
  to `inblob`, read the quote from `outblob`. Optionally ships collateral with the quote.

`issue_descriptor` is what a node calls at start and on each key rotation: it computes the
report data from the descriptor's own fields (`veil.identity.binding`), asks the producer for
evidence over it, and signs the result.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from veil.attest.errors import EvidenceUnavailable
from veil.attest.evidence import KIND_DEV, KIND_TDX, DevEvidence, TdxEvidence
from veil.attest.report import NO_HARDWARE_ISOLATION
from veil.attest.tdx import CollateralSource
from veil.identity.account import NodeIdentity
from veil.identity.binding import report_data
from veil.identity.descriptor import (
    Descriptor,
    Evidence,
    ModelEntry,
    MpcParty,
    SignedDescriptor,
)

__all__ = [
    "DEFAULT_TSM_ROOT",
    "DevProducer",
    "EvidenceProducer",
    "TdxProducer",
    "issue_descriptor",
]

log = logging.getLogger(__name__)

DEFAULT_TSM_ROOT = Path("/sys/kernel/config/tsm/report")


class EvidenceProducer(Protocol):
    kind: str

    def produce(self, report_data: bytes) -> bytes:
        """Evidence `data` whose report data is exactly these 64 bytes."""
        ...


class DevProducer:
    """Development evidence: nothing but the node's word."""

    kind = KIND_DEV

    def produce(self, report_data: bytes) -> bytes:
        log.warning(
            "producing dev attestation evidence: %s; tee clients will refuse this node",
            NO_HARDWARE_ISOLATION,
        )
        return DevEvidence(report_data).encode()


class TdxProducer:
    """A TDX quote from configfs-tsm (needs a TDX guest kernel; root or the tsm group)."""

    kind = KIND_TDX

    def __init__(
        self, tsm_root: Path = DEFAULT_TSM_ROOT, *, collateral: CollateralSource | None = None
    ) -> None:
        self.tsm_root = Path(tsm_root)
        self.collateral = collateral

    def produce(self, report_data: bytes) -> bytes:
        if len(report_data) != 64:
            raise ValueError("report data must be 64 bytes")
        quote = self._quote(report_data)
        collateral = None if self.collateral is None else self.collateral.collateral_for(quote)
        return TdxEvidence(quote, collateral).encode()

    def _quote(self, report_data: bytes) -> bytes:
        entry = self.tsm_root / f"veil-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            entry.mkdir()
        except OSError as err:
            raise EvidenceUnavailable(
                f"no configfs-tsm report interface at {self.tsm_root} ({err.strerror}): "
                "not a TDX guest, or configfs is not mounted"
            ) from None
        try:
            provider = (entry / "provider").read_text().strip()
            if provider != "tdx_guest":
                raise EvidenceUnavailable(f"TSM provider is {provider!r}, not tdx_guest")
            (entry / "inblob").write_bytes(report_data)
            generation = (entry / "generation").read_text().strip()
            quote = (entry / "outblob").read_bytes()
            if (entry / "generation").read_text().strip() != generation:
                raise EvidenceUnavailable("the report entry was written concurrently")
        except OSError as err:
            raise EvidenceUnavailable(f"TDX quote generation failed: {err}") from None
        finally:
            with contextlib.suppress(OSError):
                entry.rmdir()
        if not quote:
            raise EvidenceUnavailable("the kernel returned an empty quote")
        return quote


def issue_descriptor(
    identity: NodeIdentity,
    producer: EvidenceProducer,
    *,
    endpoint: str,
    ohttp_keys: bytes,
    models: Sequence[ModelEntry],
    software: bytes,
    lifetime_s: int = 24 * 3600,
    now: int | None = None,
    mpc: MpcParty | None = None,
    token_keys: Sequence[bytes] = (),
) -> SignedDescriptor:
    """A signed descriptor whose evidence binds its own address, keys, models and issue time
    (and that states the MPC party the node hosts, when `mpc` is given)."""
    issued_at = int(time.time()) if now is None else now
    data = report_data(
        identity.address, ohttp_keys, (m.weights_hash for m in models), issued_at=issued_at
    )
    evidence = Evidence(producer.kind, producer.produce(data))
    descriptor = Descriptor(
        address=identity.address,
        endpoint=endpoint,
        ohttp_keys=ohttp_keys,
        models=tuple(models),
        software=software,
        evidence=evidence,
        issued_at=issued_at,
        expires_at=issued_at + lifetime_s,
        mpc=mpc,
        token_keys=tuple(token_keys),
    )
    return descriptor.sign(identity)
