"""Attestation: evidence producers (node side), evidence formats, one verifier per kind.

Kinds: `tdx` (Intel TDX, verified with dcap-qvl), `dev` (no hardware isolation), `nvidia-cc`
(reserved slot, refused). Verifiers return an `AttestationReport` of named steps and attach
it to the `AttestError` they raise. Importing this package does not import dcap_qvl.
"""

from veil.attest.binding import check_binding, expected_report_data
from veil.attest.dev import DevVerifier
from veil.attest.errors import (
    AttestError,
    BindingMismatch,
    CollateralError,
    DebugEnclave,
    EvidenceMalformed,
    EvidenceUnavailable,
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

__all__ = [
    "HARDWARE_KINDS",
    "KIND_DEV",
    "KIND_NVIDIA",
    "KIND_TDX",
    "KNOWN_KINDS",
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
    "NvidiaVerifier",
    "PccsCollateral",
    "QuoteInvalid",
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
    "check_binding",
    "default_verifiers",
    "expected_report_data",
    "issue_descriptor",
    "tdx_measurement",
    "verify_evidence",
]
