"""The verifier interface and the choice of verifier by evidence kind."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from veil.attest.dev import DevVerifier
from veil.attest.errors import UnknownEvidenceKind
from veil.attest.nvidia import NvidiaVerifier
from veil.attest.report import AttestationReport
from veil.attest.tdx import CollateralSource, TdxVerifier

__all__ = ["EvidenceVerifier", "default_verifiers", "verify_evidence"]


class EvidenceVerifier(Protocol):
    """One verifier per evidence kind.

    `verify` returns the report of evidence that passed every step, or raises an `AttestError`
    whose `report` lists the steps. It never checks the binding to a descriptor: the report's
    `report_data` is for the caller to compare (`veil.attest.binding.check_binding`).
    """

    kind: str
    hardware: bool  # False: "no hardware isolation"

    def verify(self, data: bytes, *, now: int) -> AttestationReport: ...


def default_verifiers(
    *,
    tcb_statuses: frozenset[str] | None = None,
    rejected_advisories: frozenset[str] = frozenset(),
    collateral: CollateralSource | None = None,
) -> dict[str, EvidenceVerifier]:
    """A verifier for every known kind, TDX configured with the caller's TCB policy."""
    tdx = (
        TdxVerifier(collateral=collateral, rejected_advisories=rejected_advisories)
        if tcb_statuses is None
        else TdxVerifier(
            tcb_statuses=tcb_statuses,
            rejected_advisories=rejected_advisories,
            collateral=collateral,
        )
    )
    verifiers: list[EvidenceVerifier] = [DevVerifier(), tdx, NvidiaVerifier()]
    return {v.kind: v for v in verifiers}


def verify_evidence(
    kind: str,
    data: bytes,
    *,
    now: int,
    verifiers: Mapping[str, EvidenceVerifier] | None = None,
) -> AttestationReport:
    """Verify with the verifier for `kind`; an unknown kind is `UnknownEvidenceKind`."""
    table = default_verifiers() if verifiers is None else verifiers
    verifier = table.get(kind)
    if verifier is None:
        raise UnknownEvidenceKind(f"no verifier for evidence kind {kind!r}")
    return verifier.verify(data, now=now)
