"""Typed errors of attestation and of the node policy built on it (`veil.attest.policy`).

Each names the failed check; a verifier's error carries its `AttestationReport`, a policy's
`NodeRejected` the whole `VerificationReport`.

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
     ├─ EvidenceUnavailable     this machine cannot produce the evidence (no TEE device)
     ├─ NodeRejected            a node failed verification under the policy (`check`, `report`)
     ├─ PolicyConfigError       a policy or release list that cannot be used as configured
     └─ KeyConfigError          no usable OHTTP key list: the fetch failed, it is malformed, or
                                it is not the one the node's verified descriptor binds
```
The last three are raised by the policy and by the client that applies it; `veil.client`
re-exports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from veil.errors import VeilError

if TYPE_CHECKING:
    from veil.attest.policy import VerificationReport
    from veil.attest.report import AttestationReport

__all__ = [
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
        # a verifier's report, or (NodeRejected) the policy's whole VerificationReport
        self.report: AttestationReport | VerificationReport | None = report


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


class NodeRejected(AttestError):
    """The node failed a verification step: no request may be sent to it.

    `check` names the failed step, `report` is the whole `VerificationReport` (every step;
    `veil verify` prints it), and `cause` is the typed error the step raised (a descriptor,
    attestation or policy error).
    """

    def __init__(
        self,
        message: str,
        *,
        check: str,
        report: VerificationReport | None = None,
        cause: VeilError | None = None,
    ) -> None:
        super().__init__(message, check=check)
        self.report = report
        self.cause = cause


class PolicyConfigError(AttestError):
    """The policy is inconsistent (e.g. `tee` accepting dev evidence) or its release list is bad."""

    default_check = "policy"


class KeyConfigError(AttestError):
    """No usable key configuration: fetch failed, the list is malformed, or the check refused it.

    A policy error because a key list is only usable once pinned to a verified descriptor
    (`VerificationReport.key_check`); the client's transports raise it for the fetch too.
    """

    default_check = "key_config"
