"""Real Intel TDX quotes through dcap-qvl: UpToDate, outdated, outside the window, tampering."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.attestation import (
    OUTDATED_NOW,
    SGX_NOW,
    TDX_LATE,
    TDX_MRTD,
    TDX_NOW,
    TDX_REPORT_DATA,
    TESTDATA,
    read,
    tdx_evidence,
)
from veil.attest import (
    AttestError,
    CollateralError,
    CollateralFile,
    EvidenceMalformed,
    QuoteInvalid,
    StepStatus,
    TcbStatusRefused,
    TdxEvidence,
    TdxVerifier,
    TeeTypeMismatch,
    tdx_measurement,
)
from veil.attest.tdx import TDX_MEASUREMENT_LABEL, TDX_STEPS

QUOTE = read("tdx_quote")
SIGNED_REGION = 48 + 584  # v4 header + TD report body: what the attestation key signs


def verifier(collateral: str = "tdx_quote_collateral.json", **kwargs: object) -> TdxVerifier:
    return TdxVerifier(collateral=CollateralFile(TESTDATA / collateral), **kwargs)  # type: ignore[arg-type]


def test_real_quote_is_up_to_date_at_the_pinned_time() -> None:
    report = verifier().verify(QUOTE, now=TDX_NOW)
    assert [s.name for s in report.steps] == list(TDX_STEPS)
    assert all(s.status is StepStatus.PASSED for s in report.steps)
    assert report.ok and report.hardware_isolated and report.kind == "tdx"
    assert report.tcb_status == "UpToDate" and report.advisories == ()
    assert report.report_data == TDX_REPORT_DATA
    assert report.measurements["MRTD"] == TDX_MRTD
    assert set(report.measurements) == {"MRTD", "RTMR0", "RTMR1", "RTMR2", "RTMR3"}
    regs = b"".join(bytes.fromhex(report.measurements[k]) for k in ("MRTD", "RTMR0", "RTMR1"))
    regs += b"".join(bytes.fromhex(report.measurements[k]) for k in ("RTMR2", "RTMR3"))
    assert report.measurement == hashlib.sha256(TDX_MEASUREMENT_LABEL + regs).digest()


def test_collateral_shipped_in_the_evidence_is_used() -> None:
    evidence = tdx_evidence("tdx_quote", "tdx_quote_collateral.json")
    report = TdxVerifier().verify(evidence, now=TDX_NOW)
    assert report.tcb_status == "UpToDate"
    assert "shipped with the evidence" in report.steps[2].detail


def test_outdated_quote_is_refused() -> None:
    with pytest.raises(TcbStatusRefused) as err:
        verifier("tdx_quote_outdated_collateral.json").verify(
            read("tdx_quote_outdated"), now=OUTDATED_NOW
        )
    report = err.value.report
    assert report is not None and not report.ok
    assert {s.name: s.status for s in report.steps}["quote_signature"] is StepStatus.FAILED
    assert report.measurement is None


@pytest.mark.parametrize("now", [TDX_LATE, 1_600_000_000])
def test_outside_the_collateral_window_is_refused(now: int) -> None:
    with pytest.raises(CollateralError) as err:
        verifier().verify(QUOTE, now=now)
    assert err.value.report is not None
    statuses = [s.status for s in err.value.report.steps]
    assert statuses[-3:] == [StepStatus.SKIPPED] * 3


def test_up_to_date_is_refused_when_the_policy_wants_otherwise() -> None:
    with pytest.raises(TcbStatusRefused, match="not accepted"):
        verifier(tcb_statuses={"SWHardeningNeeded"}).verify(QUOTE, now=TDX_NOW)


def test_unknown_tcb_status_in_policy_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="unknown TCB"):
        TdxVerifier(tcb_statuses={"Fine"})


def test_every_flipped_bit_in_the_signed_region_is_refused() -> None:
    v = verifier()
    for position in range(SIGNED_REGION):
        data = bytearray(QUOTE)
        data[position] ^= 0x01
        with pytest.raises(AttestError):
            v.verify(bytes(data), now=TDX_NOW)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, len(QUOTE) - 1), st.integers(1, 255))
def test_any_byte_change_is_a_typed_refusal_or_harmless(position: int, xor: int) -> None:
    """Anywhere in the quote: a typed refusal, never a crash; inside the signed region, always."""
    data = bytearray(QUOTE)
    data[position] ^= xor
    try:
        report = verifier().verify(bytes(data), now=TDX_NOW)
    except AttestError:
        return
    assert position >= SIGNED_REGION  # unsigned padding / certificate text only
    assert report.report_data == TDX_REPORT_DATA


def test_sgx_quote_is_refused_where_tdx_is_required() -> None:
    with pytest.raises(TeeTypeMismatch) as err:
        verifier("sgx_quote_collateral.json").verify(read("sgx_quote"), now=SGX_NOW)
    assert err.value.check == "tee_type"
    assert "SGX" in str(err.value)


def test_collateral_of_another_platform_is_refused() -> None:
    with pytest.raises(QuoteInvalid):
        verifier("sgx_quote_collateral.json").verify(QUOTE, now=TDX_NOW)


def test_no_collateral_is_refused() -> None:
    with pytest.raises(CollateralError, match="no collateral"):
        TdxVerifier().verify(QUOTE, now=TDX_NOW)


def test_unreadable_or_broken_collateral_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CollateralError, match="cannot read"):
        TdxVerifier(collateral=CollateralFile(tmp_path / "absent.json")).verify(QUOTE, now=TDX_NOW)
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    with pytest.raises(CollateralError, match="does not parse"):
        TdxVerifier(collateral=CollateralFile(broken)).verify(QUOTE, now=TDX_NOW)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x04\x00\x02\x00garbage",
        QUOTE[:100],
        b"{",
        b"[1]",
        b'{"quote": "AAAA"}',
        b'{"quote": "!!", "collateral": null}',
        b'{"quote": "", "collateral": null}',
        b'{"quote": "AAAA", "collateral": [1]}',
        b"{" + b'"a":[' * 5000 + b"]}",
    ],
)
def test_malformed_evidence_is_a_typed_error(data: bytes) -> None:
    with pytest.raises(EvidenceMalformed) as err:
        verifier().verify(data, now=TDX_NOW)
    assert err.value.check == "parse"
    assert err.value.report is not None


def test_evidence_container_round_trips() -> None:
    evidence = TdxEvidence(QUOTE, (TESTDATA / "tdx_quote_collateral.json").read_text())
    assert TdxEvidence.decode(evidence.encode()).quote == QUOTE
    assert TdxEvidence.decode(QUOTE) == TdxEvidence(QUOTE, None)


def test_measurement_needs_five_48_byte_registers() -> None:
    with pytest.raises(ValueError):
        tdx_measurement(b"\x00" * 48, [b"\x00" * 48] * 3)
    with pytest.raises(ValueError):
        tdx_measurement(b"\x00" * 47, [b"\x00" * 48] * 4)
