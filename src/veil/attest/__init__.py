"""Attestation: evidence producers (node side), evidence formats, one verifier per kind, and
the node policy a client applies (`veil.attest.policy`: `Policy`, `verify_node`).

Kinds: `tdx` (Intel TDX, verified with dcap-qvl), `dev` (no hardware isolation), `nvidia-cc`
(reserved slot, refused). Verifiers return an `AttestationReport` of named steps and attach
it to the `AttestError` they raise.

Names are loaded on first use (PEP 562), so `veil verify --help` and `veil --help` do not
import eth_account or dcap_qvl.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "veil.attest.binding": ("check_binding", "expected_report_data"),
    "veil.attest.dev": ("DevVerifier",),
    "veil.attest.errors": (
        "AttestError",
        "BindingMismatch",
        "CollateralError",
        "DebugEnclave",
        "EvidenceMalformed",
        "EvidenceUnavailable",
        "KeyConfigError",
        "NodeRejected",
        "PolicyConfigError",
        "QuoteInvalid",
        "TcbStatusRefused",
        "TeeTypeMismatch",
        "UnknownEvidenceKind",
        "UnsupportedEvidence",
    ),
    "veil.attest.evidence": (
        "HARDWARE_KINDS",
        "KIND_DEV",
        "KIND_NVIDIA",
        "KIND_TDX",
        "KNOWN_KINDS",
        "DevEvidence",
        "TdxEvidence",
    ),
    "veil.attest.nvidia": ("NvidiaVerifier",),
    "veil.attest.policy": (
        "NODE_STEPS",
        "LocalReleases",
        "Policy",
        "PrivacyMode",
        "Release",
        "ReleaseSource",
        "VerificationReport",
        "verify_node",
    ),
    "veil.attest.producer": ("DevProducer", "EvidenceProducer", "TdxProducer", "issue_descriptor"),
    "veil.attest.report": (
        "NO_HARDWARE_ISOLATION",
        "AttestationReport",
        "Step",
        "StepLog",
        "StepStatus",
    ),
    "veil.attest.tdx": (
        "CollateralFile",
        "CollateralSource",
        "PccsCollateral",
        "TdxVerifier",
        "tdx_measurement",
    ),
    "veil.attest.verifier": ("EvidenceVerifier", "default_verifiers", "verify_evidence"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "HARDWARE_KINDS",
    "KIND_DEV",
    "KIND_NVIDIA",
    "KIND_TDX",
    "KNOWN_KINDS",
    "NODE_STEPS",
    "NO_HARDWARE_ISOLATION",
    "AttestError",
    "AttestationReport",
    "BindingMismatch",
    "CollateralError",
    "CollateralFile",
    "CollateralSource",
    "DebugEnclave",
    "DevEvidence",
    "DevProducer",
    "DevVerifier",
    "EvidenceMalformed",
    "EvidenceProducer",
    "EvidenceUnavailable",
    "EvidenceVerifier",
    "KeyConfigError",
    "LocalReleases",
    "NodeRejected",
    "NvidiaVerifier",
    "PccsCollateral",
    "Policy",
    "PolicyConfigError",
    "PrivacyMode",
    "QuoteInvalid",
    "Release",
    "ReleaseSource",
    "Step",
    "StepLog",
    "StepStatus",
    "TcbStatusRefused",
    "TdxEvidence",
    "TdxProducer",
    "TdxVerifier",
    "TeeTypeMismatch",
    "UnknownEvidenceKind",
    "UnsupportedEvidence",
    "VerificationReport",
    "check_binding",
    "default_verifiers",
    "expected_report_data",
    "issue_descriptor",
    "tdx_measurement",
    "verify_evidence",
    "verify_node",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'veil.attest' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from veil.attest.binding import check_binding, expected_report_data
    from veil.attest.dev import DevVerifier
    from veil.attest.errors import (
        AttestError,
        BindingMismatch,
        CollateralError,
        DebugEnclave,
        EvidenceMalformed,
        EvidenceUnavailable,
        KeyConfigError,
        NodeRejected,
        PolicyConfigError,
        QuoteInvalid,
        TcbStatusRefused,
        TeeTypeMismatch,
        UnknownEvidenceKind,
        UnsupportedEvidence,
    )
    from veil.attest.evidence import (
        HARDWARE_KINDS,
        KIND_DEV,
        KIND_NVIDIA,
        KIND_TDX,
        KNOWN_KINDS,
        DevEvidence,
        TdxEvidence,
    )
    from veil.attest.nvidia import NvidiaVerifier
    from veil.attest.policy import (
        NODE_STEPS,
        LocalReleases,
        Policy,
        PrivacyMode,
        Release,
        ReleaseSource,
        VerificationReport,
        verify_node,
    )
    from veil.attest.producer import DevProducer, EvidenceProducer, TdxProducer, issue_descriptor
    from veil.attest.report import (
        NO_HARDWARE_ISOLATION,
        AttestationReport,
        Step,
        StepLog,
        StepStatus,
    )
    from veil.attest.tdx import (
        CollateralFile,
        CollateralSource,
        PccsCollateral,
        TdxVerifier,
        tdx_measurement,
    )
    from veil.attest.verifier import EvidenceVerifier, default_verifiers, verify_evidence
