"""`dev` evidence: no hardware, for local development only.

It carries the report data in the clear, vouched for by nothing but the descriptor's signature:
a node operator can put any keys and any software claim in it. Its report says "no hardware
isolation" and carries that as a warning; policies that require hardware refuse the kind
before it is ever verified.
"""

from __future__ import annotations

from veil.attest.errors import AttestError
from veil.attest.evidence import KIND_DEV, DevEvidence
from veil.attest.report import NO_HARDWARE_ISOLATION, AttestationReport, StepLog, StepStatus

__all__ = ["DEV_STEPS", "DEV_WARNING", "DevVerifier"]

DEV_STEPS = ("parse", "hardware")
DEV_WARNING = (
    f"dev evidence: {NO_HARDWARE_ISOLATION}; only the node's own signature vouches for its keys"
)


class DevVerifier:
    kind = KIND_DEV
    hardware = False

    def verify(self, data: bytes, *, now: int) -> AttestationReport:
        report = AttestationReport(kind=self.kind, hardware_isolated=False)
        log = StepLog()
        report.steps = log.steps
        try:
            with log.step("parse"):
                evidence = DevEvidence.decode(data)
        except AttestError as err:
            log.skip_rest(DEV_STEPS, "an earlier step failed")
            err.report = report
            raise
        log.add("hardware", StepStatus.WARNING, NO_HARDWARE_ISOLATION)
        report.report_data = evidence.report_data
        report.warnings.append(DEV_WARNING)
        return report
