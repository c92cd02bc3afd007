"""The slot for NVIDIA confidential-computing GPU evidence (`nvidia-cc`).

The verifier has the same interface as the others; until GPU evidence (the GPU's attestation
report with its certificate chain, checked against NVIDIA's RIM service and OCSP) is
implemented it refuses every input with `UnsupportedEvidence`, and policies refuse the kind.
"""

from __future__ import annotations

from veil.attest.errors import UnsupportedEvidence
from veil.attest.evidence import KIND_NVIDIA
from veil.attest.report import AttestationReport, StepLog, StepStatus

__all__ = ["NvidiaVerifier"]


class NvidiaVerifier:
    kind = KIND_NVIDIA
    hardware = True

    def verify(self, data: bytes, *, now: int) -> AttestationReport:
        log = StepLog()
        log.add("verifier", StepStatus.FAILED, "NVIDIA CC evidence is not supported yet")
        report = AttestationReport(kind=self.kind, hardware_isolated=True, steps=log.steps)
        raise UnsupportedEvidence(
            "NVIDIA confidential-computing evidence is not supported yet", report=report
        )
