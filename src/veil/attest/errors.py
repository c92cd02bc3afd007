"""Typed errors of attestation: each names the failed check and carries the verifier's report.

```
VeilError
 └─ AttestError                 check: the failed step; report: AttestationReport or None
     ├─ EvidenceMalformed       the evidence bytes do not parse as their kind says
     ├─ UnknownEvidenceKind     no verifier has this kind
     ├─ UnsupportedEvidence     a known kind whose verifier does not exist yet (NVIDIA CC)
     ├─ TeeTypeMismatch         e.g. an SGX quote where a TDX quote is required
     ├─ CollateralError         collateral missing, broken, or not valid at `now`
     ├─ QuoteInvalid            a signature or the certificate chain does not verify
     ├─ TcbStatusRefused        the platform's TCB level is not one the policy accepts
     ├─ DebugEnclave            the trust domain runs in debug mode: the host can read it
     ├─ BindingMismatch         report data does not bind the presented keys / descriptor
     └─ EvidenceUnavailable     this machine cannot produce the evidence (no TEE device)
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from veil.errors import VeilError

if TYPE_CHECKING:
    from veil.attest.report import AttestationReport

__all__ = [
    "AttestError",
    "BindingMismatch",
    "CollateralError",
    "DebugEnclave",
    "EvidenceMalformed",
    "EvidenceUnavailable",
    "QuoteInvalid",
    "TcbStatusRefused",
    "TeeTypeMismatch",
    "UnknownEvidenceKind",
    "UnsupportedEvidence",
]


class AttestError(VeilError):
    """Attestation refused; `check` names the step, `report` (when set) shows every step."""

    default_check: ClassVar[str] = "attestation"

    def __init__(
        self,
        message: str,
        *,
        check: str | None = None,
        report: AttestationReport | None = None,
    ) -> None:
        super().__init__(message)
        self.check = check or self.default_check
        self.report = report


class EvidenceMalformed(AttestError):
    default_check = "parse"


class UnknownEvidenceKind(AttestError):
    default_check = "kind"


class UnsupportedEvidence(AttestError):
    default_check = "kind"


class TeeTypeMismatch(AttestError):
    default_check = "tee_type"


class CollateralError(AttestError):
    default_check = "collateral"


class QuoteInvalid(AttestError):
    default_check = "quote_signature"


class TcbStatusRefused(AttestError):
    default_check = "tcb_status"


class DebugEnclave(AttestError):
    default_check = "td_attributes"


class BindingMismatch(AttestError):
    default_check = "key_binding"


class EvidenceUnavailable(AttestError):
    default_check = "produce"
