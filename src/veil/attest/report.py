"""Verification as data: named steps with their outcome, and what an attestation established.

A verifier records each step in a `StepLog` as it goes. On success it returns its report; on
failure the step is recorded as failed and the report rides on the raised error (`err.report`),
so `veil verify` and the client can show exactly which check refused what.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum

from veil.errors import VeilError

__all__ = [
    "NO_HARDWARE_ISOLATION",
    "AttestationReport",
    "Step",
    "StepLog",
    "StepStatus",
]

# The words every surface shows for evidence that no hardware vouches for.
NO_HARDWARE_ISOLATION = "no hardware isolation"


class StepStatus(StrEnum):
    PASSED = "passed"
    WARNING = "warning"  # passed, with something the user must see
    FAILED = "failed"
    SKIPPED = "skipped"  # not run: nothing to check, or an earlier step failed


@dataclass(frozen=True)
class Step:
    name: str
    status: StepStatus
    detail: str = ""


class StepLog:
    """The steps of one verification, in order."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    @contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        """Run a step: a VeilError inside records it as failed (and propagates).

        Append to the yielded list to give a detail for the passed step.
        """
        detail: list[str] = []
        try:
            yield detail
        except VeilError as err:
            self.steps.append(Step(name, StepStatus.FAILED, str(err)))
            raise
        self.steps.append(Step(name, StepStatus.PASSED, "; ".join(detail)))

    def add(self, name: str, status: StepStatus, detail: str = "") -> None:
        self.steps.append(Step(name, status, detail))

    def skip_rest(self, names: list[str] | tuple[str, ...], reason: str) -> None:
        """Mark the planned steps that did not run as skipped."""
        done = {s.name for s in self.steps}
        for name in names:
            if name not in done:
                self.add(name, StepStatus.SKIPPED, reason)

    @property
    def failed(self) -> bool:
        return any(s.status is StepStatus.FAILED for s in self.steps)


@dataclass
class AttestationReport:
    """What one piece of evidence established (or, attached to an error, how far it got)."""

    kind: str
    hardware_isolated: bool  # False: the node's signature is all there is
    steps: list[Step] = field(default_factory=list)
    measurements: dict[str, str] = field(default_factory=dict)  # name -> hex (MRTD, RTMR0-3)
    measurement: bytes | None = None  # the one digest releases are approved by
    tcb_status: str | None = None
    advisories: tuple[str, ...] = ()
    report_data: bytes | None = None  # 64 bytes the evidence binds, when verified
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and not any(s.status is StepStatus.FAILED for s in self.steps)

    @property
    def isolation(self) -> str:
        """A label for display."""
        return f"hardware ({self.kind})" if self.hardware_isolated else NO_HARDWARE_ISOLATION
