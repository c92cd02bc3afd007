"""Shared helpers for the identity / attest / policy / receipt tests: test data, descriptors."""

from __future__ import annotations

import json
from pathlib import Path

from veil.attest.evidence import KIND_TDX, TdxEvidence
from veil.attest.producer import DevProducer, issue_descriptor
from veil.attest.report import AttestationReport, Step, StepStatus
from veil.identity import (
    Descriptor,
    Evidence,
    ModelEntry,
    MpcParty,
    NodeIdentity,
    SignedDescriptor,
)
from veil.node.keys import NodeKeys

# Copied from the shared test data; tests/data/README.md names the source.
TESTDATA = Path(__file__).resolve().parents[1] / "data" / "attestation"

TDX_NOW = 1751624163  # README: tdx_quote is UpToDate at this time
TDX_LATE = 1795314654  # README: CrlExpired
OUTDATED_NOW = 1772708331
SGX_NOW = 1751626571
TDX_REPORT_DATA = bytes.fromhex(
    "9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9"
    "eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20"
)
TDX_MRTD = (
    "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407"
    "de03ae6dc5f87f27428b2538873118b7"
)
MODEL_HASH = bytes.fromhex("ab" * 32)
SOFTWARE = bytes.fromhex("5a" * 32)


def read(name: str) -> bytes:
    return (TESTDATA / name).read_bytes()


def tdx_evidence(quote_file: str = "tdx_quote", collateral_file: str | None = None) -> bytes:
    """Veil `tdx` evidence from a sample quote, with the sample collateral inside."""
    collateral = None if collateral_file is None else (TESTDATA / collateral_file).read_text()
    return TdxEvidence(read(quote_file), collateral).encode()


def dev_descriptor(
    identity: NodeIdentity,
    keys: NodeKeys,
    *,
    now: int = TDX_NOW,
    lifetime_s: int = 3600,
    models: tuple[ModelEntry, ...] = (ModelEntry("smollm2-135m-instruct", MODEL_HASH),),
    mpc: MpcParty | None = None,
) -> SignedDescriptor:
    return issue_descriptor(
        identity,
        DevProducer(),
        endpoint="https://node.veil.invalid",
        ohttp_keys=keys.encoded_configs(),
        models=models,
        software=SOFTWARE,
        lifetime_s=lifetime_s,
        now=now,
        mpc=mpc,
    )


def with_evidence(
    identity: NodeIdentity, base: SignedDescriptor, kind: str, data: bytes, **changes: object
) -> SignedDescriptor:
    """The same descriptor with other evidence (and fields), signed again."""
    d = base.descriptor
    fields = {**d.__dict__, "evidence": Evidence(kind, data), **changes}
    return Descriptor(**fields).sign(identity)  # type: ignore[arg-type]


def mutate_body(signed: SignedDescriptor, **changes: object) -> bytes:
    """The wire bytes with body fields replaced, keeping the old signature."""
    obj = json.loads(signed.encode())
    obj["descriptor"].update(changes)
    return json.dumps(obj).encode()


class FakeEvidenceVerifier:
    """Test stand-in for a hardware verifier we cannot feed genuine evidence for.

    Its evidence is `{"report_data": hex, "measurement": hex}`; it says hardware vouches.
    It exists to test the policy's binding / measurement / release logic on its own; the real
    TDX verifier is tested against real quotes in tests/attest/test_tdx.py.
    """

    kind = KIND_TDX
    hardware = True

    @staticmethod
    def evidence(report_data: bytes, measurement: bytes) -> bytes:
        return json.dumps(
            {"report_data": report_data.hex(), "measurement": measurement.hex()}
        ).encode()

    def verify(self, data: bytes, *, now: int) -> AttestationReport:
        obj = json.loads(data)
        return AttestationReport(
            kind=self.kind,
            hardware_isolated=True,
            steps=[Step("fake", StepStatus.PASSED)],
            measurement=bytes.fromhex(obj["measurement"]),
            tcb_status="UpToDate",
            report_data=bytes.fromhex(obj["report_data"]),
        )
