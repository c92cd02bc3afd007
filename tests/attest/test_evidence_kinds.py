"""Dev evidence, the NVIDIA slot, kind dispatch, binding checks and the producers."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from support.attestation import MODEL_HASH, TDX_NOW, TDX_REPORT_DATA, dev_descriptor
from veil.attest import (
    NO_HARDWARE_ISOLATION,
    BindingMismatch,
    DevEvidence,
    DevProducer,
    DevVerifier,
    EvidenceMalformed,
    EvidenceUnavailable,
    NvidiaVerifier,
    StepStatus,
    TdxProducer,
    UnknownEvidenceKind,
    UnsupportedEvidence,
    check_binding,
    default_verifiers,
    expected_report_data,
    verify_evidence,
)
from veil.identity import NodeIdentity, report_data
from veil.node.keys import NodeKeys

IDENTITY = NodeIdentity.generate()
KEYS = NodeKeys.generate()


def test_dev_producer_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="veil.attest.producer"):
        data = DevProducer().produce(b"\x01" * 64)
    assert NO_HARDWARE_ISOLATION in caplog.text
    assert DevEvidence.decode(data).report_data == b"\x01" * 64


def test_dev_verifier_says_no_hardware_isolation() -> None:
    report = DevVerifier().verify(DevEvidence(b"\x02" * 64).encode(), now=0)
    assert report.ok and not report.hardware_isolated
    assert report.isolation == NO_HARDWARE_ISOLATION
    assert any(NO_HARDWARE_ISOLATION in w for w in report.warnings)
    assert {s.name: s.status for s in report.steps}["hardware"] is StepStatus.WARNING
    assert report.report_data == b"\x02" * 64


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"null",
        b"{}",
        b'{"isolation": "tdx", "report_data": "0x00"}',
        b'{"isolation": "none", "report_data": "0x' + b"zz" * 64 + b'"}',
        b'{"isolation": "none", "report_data": "0x00"}',
        b'{"isolation": "none", "report_data": 5}',
        b"[" * 10_000,
    ],
)
def test_malformed_dev_evidence(data: bytes) -> None:
    with pytest.raises(EvidenceMalformed) as err:
        DevVerifier().verify(data, now=0)
    assert err.value.report is not None and not err.value.report.ok


def test_nvidia_slot_refuses_with_a_typed_error() -> None:
    with pytest.raises(UnsupportedEvidence, match="not supported yet") as err:
        NvidiaVerifier().verify(b"anything", now=0)
    assert err.value.report is not None and err.value.report.kind == "nvidia-cc"


def test_unknown_kind_is_a_typed_error() -> None:
    with pytest.raises(UnknownEvidenceKind):
        verify_evidence("sev-snp", b"x", now=0)
    assert set(default_verifiers()) == {"dev", "tdx", "nvidia-cc"}


def test_issued_dev_descriptor_binds_its_own_keys() -> None:
    signed = dev_descriptor(IDENTITY, KEYS)
    d = signed.descriptor
    found = DevEvidence.decode(d.evidence.data).report_data
    check_binding(found, d)
    assert found == report_data(
        IDENTITY.address, KEYS.encoded_configs(), [MODEL_HASH], issued_at=d.issued_at
    )


def test_real_quote_binds_none_of_our_keys() -> None:
    d = dev_descriptor(IDENTITY, KEYS, now=TDX_NOW).descriptor
    with pytest.raises(BindingMismatch) as err:
        check_binding(TDX_REPORT_DATA, d)
    assert err.value.check == "key_binding"


def test_binding_to_other_keys_address_or_time_is_refused() -> None:
    d = dev_descriptor(IDENTITY, KEYS).descriptor
    good = expected_report_data(d)
    other_keys = report_data(
        d.address, NodeKeys.generate().encoded_configs(), d.model_hashes, issued_at=d.issued_at
    )
    other_node = report_data(
        NodeIdentity.generate().address, d.ohttp_keys, d.model_hashes, issued_at=d.issued_at
    )
    for wrong in (other_keys, other_node):
        with pytest.raises(BindingMismatch) as err:
            check_binding(wrong, d)
        assert err.value.check == "key_binding"
    with pytest.raises(BindingMismatch) as err:
        check_binding(good[:32] + bytes(32), d)
    assert err.value.check == "freshness"
    for nothing in (None, b"", good[:63]):
        with pytest.raises(BindingMismatch):
            check_binding(nothing, d)
    nonce = b"\x05" * 32
    check_binding(good[:32] + nonce, d, nonce=nonce)


def test_tdx_producer_without_configfs_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(EvidenceUnavailable, match="configfs-tsm"):
        TdxProducer(tmp_path / "absent").produce(b"\x00" * 64)
    # A directory that is not a TSM: the entry lacks `provider`, and is cleaned up.
    with pytest.raises(EvidenceUnavailable):
        TdxProducer(tmp_path).produce(b"\x00" * 64)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        TdxProducer(tmp_path).produce(b"short")


def test_importing_attest_and_the_cli_stays_light() -> None:
    code = (
        "import sys, veil.attest, veil.commands.verify, veil.cli\n"
        "heavy = {'dcap_qvl', 'eth_account', 'web3', 'torch'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_exports_match_all() -> None:
    import veil.attest

    for name in veil.attest.__all__:
        assert getattr(veil.attest, name) is not None
    with pytest.raises(AttributeError):
        veil.attest.DoesNotExist  # noqa: B018
