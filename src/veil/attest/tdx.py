"""Intel TDX quote verification with dcap-qvl, at an explicit time, against given collateral.

Steps (each recorded in the report, in this order):

1. `parse`: the evidence and the quote parse;
2. `tee_type`: it is a TDX quote (an SGX quote proves nothing about a trust domain);
3. `collateral`: Intel's TCB info, QE identity and CRLs: from the configured source (a file,
   or a PCCS URL in production), else from the evidence itself;
4. `quote_signature`: dcap-qvl checks the PCK chain up to Intel's root, the CRLs, the QE report
   and the quote signature, and that every piece of collateral is valid at `now`;
5. `tcb_status`: the platform's TCB status is one the caller accepts, and no advisory it
   rejects applies;
6. `td_attributes`: the TD is not in debug mode (a debug TD's memory is open to the host);
7. `measurements`: MRTD and RTMR0-3, and their digest `measurement` for the release check.

Whether the report data binds the node's keys is the caller's next step
(`veil.attest.binding.check_binding`): this module only says what the quote contains.
dcap_qvl is imported when a quote is verified, not when this module is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from veil.attest.errors import (
    AttestError,
    CollateralError,
    DebugEnclave,
    EvidenceMalformed,
    QuoteInvalid,
    TcbStatusRefused,
    TeeTypeMismatch,
)
from veil.attest.evidence import KIND_TDX, TdxEvidence
from veil.attest.report import AttestationReport, StepLog

__all__ = [
    "DEFAULT_TCB_STATUSES",
    "TCB_STATUSES",
    "TDX_MEASUREMENT_LABEL",
    "TDX_STEPS",
    "CollateralFile",
    "CollateralSource",
    "PccsCollateral",
    "TdxVerifier",
    "tdx_measurement",
]

# Intel's TCB statuses, best first.
TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)
DEFAULT_TCB_STATUSES = frozenset({"UpToDate"})
TDX_MEASUREMENT_LABEL = b"veil/tdx-measurement/v1\x00"
TDX_STEPS = (
    "parse",
    "tee_type",
    "collateral",
    "quote_signature",
    "tcb_status",
    "td_attributes",
    "measurements",
)
_MEASUREMENT_FIELDS = ("mr_td", "rt_mr0", "rt_mr1", "rt_mr2", "rt_mr3")
_MEASUREMENT_NAMES = {
    "mr_td": "MRTD",
    "rt_mr0": "RTMR0",
    "rt_mr1": "RTMR1",
    "rt_mr2": "RTMR2",
    "rt_mr3": "RTMR3",
}


class CollateralSource(Protocol):
    """Where the verifier gets collateral for a quote: QuoteCollateralV3 JSON text."""

    def collateral_for(self, quote: bytes) -> str: ...


class CollateralFile:
    """Collateral saved in a file (tests, offline checks, a client's own cache)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def collateral_for(self, quote: bytes) -> str:
        try:
            return self.path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise CollateralError(f"cannot read collateral {self.path}: {err}") from None


class PccsCollateral:
    """Collateral fetched from a PCCS (or Intel PCS) URL: production only, never in tests.

    A lookup tells that service which platform (FMSPC) the client is interested in; prefer
    collateral shipped in the evidence where the node provides it.
    """

    def __init__(self, url: str, *, timeout_s: float = 20.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def collateral_for(self, quote: bytes) -> str:
        import dcap_qvl

        def fetch() -> str:
            return str(asyncio.run(dcap_qvl.get_collateral(self.url, quote)).to_json())

        # A worker thread has no running event loop, so this works inside async callers too.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            try:
                return pool.submit(fetch).result(timeout=self.timeout_s)
            except concurrent.futures.TimeoutError:
                raise CollateralError(f"PCCS {self.url} did not answer in time") from None
            except (ValueError, RuntimeError, OSError) as err:
                raise CollateralError(f"PCCS {self.url}: {err}") from None


def tdx_measurement(mr_td: bytes, rtmrs: Iterable[bytes]) -> bytes:
    """The release measurement: sha256(label || MRTD || RTMR0 || RTMR1 || RTMR2 || RTMR3)."""
    regs = [mr_td, *rtmrs]
    if len(regs) != 5 or any(len(r) != 48 for r in regs):
        raise ValueError("MRTD and four RTMRs of 48 bytes each")
    return hashlib.sha256(TDX_MEASUREMENT_LABEL + b"".join(regs)).digest()


def _classify(message: str) -> type[AttestError]:
    """dcap-qvl reports every failure as ValueError text; map it to what failed."""
    low = message.lower()
    if "expired" in low or "in the future" in low or "not yet valid" in low:
        return CollateralError
    if "tcb level" in low or "tcb status" in low:
        return TcbStatusRefused
    if "failed to decode quote" in low:
        return EvidenceMalformed
    return QuoteInvalid


def _td_report(verified: dict[str, Any]) -> dict[str, str]:
    for value in (verified.get("report") or {}).values():
        if isinstance(value, dict) and "mr_td" in value:
            return value
    raise QuoteInvalid("verified report has no TD report")


class TdxVerifier:
    """Verifies `tdx` evidence; construct it with the caller's TCB policy and collateral."""

    kind = KIND_TDX
    hardware = True

    def __init__(
        self,
        *,
        tcb_statuses: Iterable[str] = DEFAULT_TCB_STATUSES,
        rejected_advisories: Iterable[str] = (),
        collateral: CollateralSource | None = None,
    ) -> None:
        self.tcb_statuses = frozenset(tcb_statuses)
        unknown = self.tcb_statuses - set(TCB_STATUSES)
        if unknown:
            raise ValueError(f"unknown TCB status(es): {', '.join(sorted(unknown))}")
        self.rejected_advisories = frozenset(rejected_advisories)
        self.collateral = collateral

    def verify(self, data: bytes, *, now: int) -> AttestationReport:
        """The report of a quote that passed every step; else an AttestError with the report."""
        report = AttestationReport(kind=self.kind, hardware_isolated=True)
        log = StepLog()
        report.steps = log.steps
        try:
            self._verify(data, now, report, log)
        except AttestError as err:
            log.skip_rest(TDX_STEPS, "an earlier step failed")
            err.report = report
            raise
        return report

    def _verify(self, data: bytes, now: int, report: AttestationReport, log: StepLog) -> None:
        import dcap_qvl

        with log.step("parse") as detail:
            evidence = TdxEvidence.decode(data)
            try:
                quote = dcap_qvl.parse_quote(evidence.quote)
            except ValueError as err:
                raise EvidenceMalformed(f"quote does not parse: {err}") from None
            detail.append(f"quote v{quote.header.version}, {len(evidence.quote)} bytes")
        with log.step("tee_type") as detail:
            if not quote.is_tdx():
                raise TeeTypeMismatch(f"the quote is {quote.quote_type()}, where TDX is required")
            detail.append("TDX")
        with log.step("collateral") as detail:
            if self.collateral is not None:
                text = self.collateral.collateral_for(evidence.quote)
                detail.append("from the configured source")
            elif evidence.collateral is not None:
                text = evidence.collateral
                detail.append("shipped with the evidence")
            else:
                raise CollateralError("no collateral: none in the evidence and no source set")
            try:
                collateral = dcap_qvl.QuoteCollateralV3.from_json(text)
            except (ValueError, TypeError) as err:
                raise CollateralError(f"collateral does not parse: {err}") from None
        with log.step("quote_signature") as detail:
            try:
                verified = dcap_qvl.verify(evidence.quote, collateral, now)
            except ValueError as err:
                message = str(err).splitlines()[0]
                raise _classify(message)(message) from None
            result = json.loads(verified.to_json())
            detail.append(f"chain to Intel root, collateral valid at {now}")
        with log.step("tcb_status") as detail:
            report.tcb_status = str(verified.status)
            report.advisories = tuple(verified.advisory_ids)
            if report.tcb_status not in self.tcb_statuses:
                raise TcbStatusRefused(
                    f"TCB status {report.tcb_status} is not accepted "
                    f"(accepted: {', '.join(sorted(self.tcb_statuses))})"
                )
            rejected = sorted(self.rejected_advisories & set(report.advisories))
            if rejected:
                raise TcbStatusRefused(f"rejected advisories apply: {', '.join(rejected)}")
            detail.append(report.tcb_status)
            if report.advisories:
                detail.append("advisories " + ", ".join(report.advisories))
        td = _td_report(result)
        with log.step("td_attributes") as detail:
            attributes = bytes.fromhex(td["td_attributes"])
            if attributes[0] & 0x01:
                raise DebugEnclave("the TD runs in debug mode: its memory is open to the host")
            detail.append("not debug")
        with log.step("measurements") as detail:
            regs = {name: bytes.fromhex(td[name]) for name in _MEASUREMENT_FIELDS}
            report.measurements = {_MEASUREMENT_NAMES[k]: v.hex() for k, v in regs.items()}
            report.measurement = tdx_measurement(
                regs["mr_td"], [regs[f"rt_mr{i}"] for i in range(4)]
            )
            report.report_data = bytes.fromhex(td["report_data"])
            detail.append("measurement " + report.measurement.hex())
