"""Client policy: verify_node's named steps, fail-closed refusals, and the transport key check."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from support.attestation import (
    MODEL_HASH,
    OUTDATED_NOW,
    SOFTWARE,
    TDX_NOW,
    FakeEvidenceVerifier,
    dev_descriptor,
    mutate_body,
    tdx_evidence,
    with_evidence,
)
from veil.attest import (
    NO_HARDWARE_ISOLATION,
    BindingMismatch,
    CollateralError,
    DevVerifier,
    StepStatus,
    TcbStatusRefused,
    TeeTypeMismatch,
    UnknownEvidenceKind,
)
from veil.attest.binding import expected_report_data
from veil.attest.policy import (
    NODE_STEPS,
    LocalReleases,
    Policy,
    PrivacyMode,
    Release,
    verify_node,
)
from veil.client import KeyConfigError, NodeRejected, OhttpTransport, PolicyConfigError
from veil.identity import (
    DescriptorExpired,
    DescriptorMalformed,
    DescriptorSignatureInvalid,
    ModelEntry,
    NodeIdentity,
)
from veil.node.keys import NodeKeys

IDENTITY = NodeIdentity.generate()
KEYS = NodeKeys.generate()
NOW = TDX_NOW + 60
DEV = dev_descriptor(IDENTITY, KEYS, now=TDX_NOW)
MEASURED = b"\x77" * 32
RELEASES = LocalReleases([Release(MODEL_HASH, MEASURED)])
FAKE = {"tdx": FakeEvidenceVerifier(), "dev": DevVerifier()}


def hardware_descriptor(*, measurement: bytes = MEASURED, software: bytes = MEASURED, **kw):
    """A descriptor with (fake) hardware evidence; by default it binds the descriptor."""
    data = kw.pop("report_data", None)
    base = with_evidence(IDENTITY, DEV, "tdx", b"-", software=software, **kw)
    if data is None:
        data = expected_report_data(base.descriptor)
    return with_evidence(IDENTITY, base, "tdx", FakeEvidenceVerifier.evidence(data, measurement))


def rejected(data: bytes, policy: Policy, **kwargs) -> NodeRejected:
    with pytest.raises(NodeRejected) as err:
        verify_node(data, policy, NOW, **kwargs)
    report = err.value.report
    assert report is not None and not report.verified
    assert [s.name for s in report.steps] == list(NODE_STEPS)
    failed = [s for s in report.steps if s.status is StepStatus.FAILED]
    assert [s.name for s in failed] == [err.value.check]
    after = report.steps[[s.name for s in report.steps].index(err.value.check) + 1 :]
    assert all(s.status is StepStatus.SKIPPED for s in after)
    with pytest.raises(NodeRejected):
        report.key_check()
    with pytest.raises(NodeRejected):
        report.key_configs()
    return err.value


# --- dev nodes ----------------------------------------------------------------------------


def test_dev_node_is_accepted_by_anonymous_with_the_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="veil.attest.policy"):
        report = verify_node(DEV.encode(), Policy.for_mode("anonymous"), NOW)
    assert report.verified and report.address == IDENTITY.address
    assert not report.hardware_isolated and report.isolation == NO_HARDWARE_ISOLATION
    assert any(NO_HARDWARE_ISOLATION in w for w in report.warnings)
    assert NO_HARDWARE_ISOLATION in caplog.text
    statuses = {s.name: s.status for s in report.steps}
    assert statuses["key_binding"] is StepStatus.PASSED
    assert statuses["measurement"] is StepStatus.WARNING
    assert statuses["release"] is StepStatus.WARNING  # no release list configured
    assert report.key_configs() == (KEYS.current.config,)


def test_dev_node_is_refused_by_tee() -> None:
    err = rejected(DEV.encode(), Policy.for_mode("tee", releases=RELEASES))
    assert err.check == "evidence_kind"
    assert NO_HARDWARE_ISOLATION in str(err)


def test_dev_node_with_releases_checks_the_claimed_software() -> None:
    claimed = LocalReleases([Release(MODEL_HASH, SOFTWARE)])
    report = verify_node(DEV.encode(), Policy.for_mode("anonymous", releases=claimed), NOW)
    assert [m.model_id for m in report.approved_models] == ["smollm2-135m-instruct"]
    err = rejected(DEV.encode(), Policy.for_mode("mpc", releases=RELEASES))
    assert err.check == "release"


# --- policy construction -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "tee", "accepted_kinds": {"tdx", "dev"}, "releases": RELEASES}, "hardware"),
        ({"mode": "tee", "accepted_kinds": {"tdx"}}, "approved releases"),
        ({"mode": "anonymous", "accepted_kinds": {"nvidia-cc"}}, "not supported yet"),
        ({"mode": "anonymous", "accepted_kinds": {"sev-snp"}}, "unknown evidence kind"),
        ({"mode": "anonymous", "accepted_kinds": set()}, "at least one"),
        ({"mode": "plaintext", "accepted_kinds": {"dev"}}, "unknown privacy mode"),
        ({"mode": "anonymous", "accepted_kinds": {"dev"}, "max_evidence_age_s": 0}, "positive"),
    ],
)
def test_inconsistent_policies_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(PolicyConfigError, match=message):
        Policy(**kwargs)


def test_mode_defaults() -> None:
    assert Policy.for_mode("tee", releases=RELEASES).accepted_kinds == {"tdx"}
    assert Policy.for_mode(PrivacyMode.ANONYMOUS).accepted_kinds == {"dev", "tdx"}
    assert Policy.for_mode("mpc").requires_hardware is False


# --- descriptor steps ---------------------------------------------------------------------


def test_malformed_descriptor() -> None:
    err = rejected(b'{"descriptor": 1}', Policy.for_mode("anonymous"))
    assert err.check == "descriptor" and isinstance(err.cause, DescriptorMalformed)
    assert err.report is not None and err.report.descriptor is None


def test_bad_signature() -> None:
    err = rejected(mutate_body(DEV, endpoint="https://evil.invalid"), Policy.for_mode("anonymous"))
    assert err.check == "signature" and isinstance(err.cause, DescriptorSignatureInvalid)


def test_expired_descriptor() -> None:
    with pytest.raises(NodeRejected) as err:
        verify_node(DEV.encode(), Policy.for_mode("anonymous"), DEV.descriptor.expires_at)
    assert err.value.check == "validity" and isinstance(err.value.cause, DescriptorExpired)


def test_unknown_evidence_kind() -> None:
    odd = with_evidence(IDENTITY, DEV, "sev-snp", b"report")
    err = rejected(odd.encode(), Policy.for_mode("anonymous"))
    assert err.check == "evidence_kind" and isinstance(err.cause, UnknownEvidenceKind)


def test_nvidia_evidence_is_refused_by_every_mode() -> None:
    gpu = with_evidence(IDENTITY, DEV, "nvidia-cc", b"gpu report")
    for policy in (Policy.for_mode("anonymous"), Policy.for_mode("tee", releases=RELEASES)):
        assert rejected(gpu.encode(), policy).check == "evidence_kind"


def test_evidence_too_old() -> None:
    policy = Policy.for_mode("anonymous", max_evidence_age_s=30)
    assert rejected(DEV.encode(), policy).check == "evidence_age"


def test_dev_evidence_binding_other_keys() -> None:
    other = dev_descriptor(IDENTITY, NodeKeys.generate(), now=TDX_NOW)
    swapped = with_evidence(IDENTITY, DEV, "dev", other.descriptor.evidence.data)
    err = rejected(swapped.encode(), Policy.for_mode("anonymous"))
    assert err.check == "key_binding" and isinstance(err.cause, BindingMismatch)


# --- hardware evidence (policy logic with a stand-in verifier) ----------------------------


def test_hardware_node_passes_tee() -> None:
    policy = Policy.for_mode("tee", releases=RELEASES)
    report = verify_node(hardware_descriptor().encode(), policy, NOW, verifiers=FAKE)
    assert report.verified and report.hardware_isolated
    assert all(s.status is StepStatus.PASSED for s in report.steps)
    assert report.warnings == []
    report = verify_node(
        hardware_descriptor().encode(),
        policy,
        NOW,
        model_id="smollm2-135m-instruct",
        verifiers=FAKE,
    )
    assert [m.model_id for m in report.approved_models] == ["smollm2-135m-instruct"]


def test_hardware_binding_mismatch() -> None:
    policy = Policy.for_mode("tee", releases=RELEASES)
    wrong = hardware_descriptor(report_data=b"\x00" * 64)
    assert rejected(wrong.encode(), policy, verifiers=FAKE).check == "key_binding"


def test_measured_software_differs_from_the_claim() -> None:
    policy = Policy.for_mode("tee", releases=RELEASES)
    lying = hardware_descriptor(software=b"\x78" * 32)
    assert rejected(lying.encode(), policy, verifiers=FAKE).check == "measurement"


def test_unapproved_release() -> None:
    policy = Policy.for_mode("tee", releases=LocalReleases([Release(MODEL_HASH, b"\x01" * 32)]))
    assert rejected(hardware_descriptor().encode(), policy, verifiers=FAKE).check == "release"


def test_requested_model_must_be_served_and_approved() -> None:
    two = (ModelEntry("smollm2-135m-instruct", MODEL_HASH), ModelEntry("other", b"\xcd" * 32))
    node = hardware_descriptor(models=two)
    policy = Policy.for_mode("tee", releases=RELEASES)
    report = verify_node(node.encode(), policy, NOW, verifiers=FAKE)
    assert [m.model_id for m in report.approved_models] == ["smollm2-135m-instruct"]
    assert rejected(node.encode(), policy, model_id="other", verifiers=FAKE).check == "release"
    assert rejected(node.encode(), policy, model_id="absent", verifiers=FAKE).check == "release"


# --- real TDX quotes inside descriptors ---------------------------------------------------


def test_real_quote_passes_attestation_but_binds_none_of_our_keys(tmp_path: Path) -> None:
    node = with_evidence(
        IDENTITY, DEV, "tdx", tdx_evidence("tdx_quote", "tdx_quote_collateral.json")
    )
    policy = Policy.for_mode("tee", releases=RELEASES)
    err = rejected(node.encode(), policy)
    assert err.check == "key_binding"
    assert err.report is not None and err.report.attestation is not None
    assert err.report.attestation.tcb_status == "UpToDate"
    statuses = {s.name: s.status for s in err.report.steps}
    assert statuses["attestation"] is StepStatus.PASSED


@pytest.mark.parametrize(
    ("quote", "collateral", "now", "cause"),
    [
        (
            "tdx_quote_outdated",
            "tdx_quote_outdated_collateral.json",
            OUTDATED_NOW,
            TcbStatusRefused,
        ),
        ("sgx_quote", "sgx_quote_collateral.json", NOW, TeeTypeMismatch),
        ("tdx_quote", None, NOW, CollateralError),
    ],
)
def test_real_quotes_refused_at_attestation(quote, collateral, now, cause) -> None:
    node = with_evidence(
        IDENTITY,
        DEV,
        "tdx",
        tdx_evidence(quote, collateral),
        issued_at=now - 10,
        expires_at=now + 3600,
    )
    with pytest.raises(NodeRejected) as err:
        verify_node(node.encode(), Policy.for_mode("tee", releases=RELEASES), now)
    assert err.value.check == "attestation" and isinstance(err.value.cause, cause)
    assert err.value.report is not None and err.value.report.attestation is not None
    assert not err.value.report.attestation.ok


# --- key check ----------------------------------------------------------------------------


def test_key_check_accepts_only_the_descriptor_keys() -> None:
    report = verify_node(DEV.encode(), Policy.for_mode("anonymous"), NOW)
    check = report.key_check(clock=lambda: NOW)
    check((KEYS.current.config,))
    for bad in ((NodeKeys.generate().current.config,), (KEYS.current.config,) * 0):
        with pytest.raises(KeyConfigError):
            check(bad)
    with pytest.raises(KeyConfigError, match="expired"):
        report.key_check(clock=lambda: DEV.descriptor.expires_at)((KEYS.current.config,))


def test_transport_refuses_a_substituted_key_list() -> None:
    """A relay that serves its own keys gets nothing but the key fetch."""
    report = verify_node(DEV.encode(), Policy.for_mode("anonymous"), NOW)
    sent: list[httpx.Request] = []
    swapped = NodeKeys.generate()

    def relay(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(
            200,
            content=swapped.encoded_configs(),
            headers={"content-type": "application/ohttp-keys"},
        )

    transport = OhttpTransport(
        "https://relay.veil.invalid",
        "node-a",
        keys_url="https://relay.veil.invalid/keys",
        key_check=report.key_check(clock=lambda: NOW),
        outer=httpx.MockTransport(relay),
    )
    with httpx.Client(transport=transport) as http, pytest.raises(KeyConfigError):
        http.post("https://node.veil.invalid/v1/chat/completions", json={"secret": "prompt"})
    assert [r.method for r in sent] == ["GET"]


def test_releases_file(tmp_path: Path) -> None:
    path = tmp_path / "releases.json"
    path.write_text(json.dumps([{"model_hash": MODEL_HASH.hex(), "measurement": "0x" + "77" * 32}]))
    releases = LocalReleases.from_file(path)
    assert releases.is_approved(MODEL_HASH, MEASURED) and len(releases) == 1
    for bad in ("{}", "[1]", '[{"model_hash": "zz", "measurement": "00"}]', "not json"):
        path.write_text(bad)
        with pytest.raises(PolicyConfigError):
            LocalReleases.from_file(path)
    with pytest.raises(PolicyConfigError):
        LocalReleases.from_file(tmp_path / "absent.json")
