"""Signed descriptors: round trip, signature, validity window, strict parsing (with hypothesis)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.attestation import dev_descriptor, mutate_body
from veil.identity import (
    Descriptor,
    DescriptorError,
    DescriptorExpired,
    DescriptorMalformed,
    DescriptorSignatureInvalid,
    Evidence,
    ModelEntry,
    MpcParty,
    NodeIdentity,
    SignedDescriptor,
    load_descriptor,
)
from veil.node.keys import NodeKeys

NOW = 1_700_000_000
IDENTITY = NodeIdentity.generate()
KEYS = NodeKeys.generate()
SIGNED = dev_descriptor(IDENTITY, KEYS, now=NOW)
WIRE = SIGNED.encode()


def test_round_trip() -> None:
    loaded = load_descriptor(WIRE, NOW + 10)
    assert loaded == SIGNED
    assert loaded.encode() == WIRE
    assert loaded.descriptor.key_configs() == (KEYS.current.config,)
    assert loaded.signer() == IDENTITY.address
    assert len(loaded.descriptor.digest()) == 32


def test_signed_by_another_key_is_refused() -> None:
    other = NodeIdentity.generate()
    forged = SignedDescriptor(SIGNED.descriptor, other.sign_digest(SIGNED.descriptor.digest()))
    with pytest.raises(DescriptorSignatureInvalid) as err:
        load_descriptor(forged.encode(), NOW)
    assert err.value.check == "signature"
    assert other.address in str(err.value)


def test_sign_refuses_another_identity() -> None:
    with pytest.raises(ValueError, match="another address"):
        SIGNED.descriptor.sign(NodeIdentity.generate())


@pytest.mark.parametrize(
    "changes",
    [
        {"endpoint": "https://evil.invalid"},
        {"expires_at": NOW + 10**6},
        {"issued_at": NOW - 1},
        {"software": "0x" + "00" * 32},
        {"ohttp_keys": base64.b64encode(NodeKeys.generate().encoded_configs()).decode()},
        {"models": [{"id": "other", "weights_sha256": "0x" + "cd" * 32}]},
    ],
)
def test_any_signed_field_changed_breaks_the_signature(changes: dict) -> None:
    with pytest.raises(DescriptorSignatureInvalid):
        load_descriptor(mutate_body(SIGNED, **changes), NOW)


def test_zero_signature_is_refused() -> None:
    obj = json.loads(WIRE)
    obj["signature"] = "0x" + "00" * 65
    with pytest.raises(DescriptorSignatureInvalid):
        load_descriptor(json.dumps(obj), NOW)


def test_validity_window() -> None:
    d = SIGNED.descriptor
    with pytest.raises(DescriptorExpired, match="expired") as err:
        load_descriptor(WIRE, d.expires_at)
    assert err.value.check == "validity"
    with pytest.raises(DescriptorExpired, match="future"):
        load_descriptor(WIRE, d.issued_at - 61)
    load_descriptor(WIRE, d.issued_at - 59)  # inside the tolerated clock skew
    load_descriptor(WIRE, d.expires_at - 1)


def _body() -> dict:
    return json.loads(WIRE)["descriptor"]


def _with(**changes: object) -> bytes:
    body = {**_body(), **changes}
    return json.dumps({"descriptor": body, "signature": json.loads(WIRE)["signature"]}).encode()


def _without(field: str) -> bytes:
    body = _body()
    del body[field]
    return json.dumps({"descriptor": body, "signature": json.loads(WIRE)["signature"]}).encode()


GOOD_MODEL = {"id": "m", "weights_sha256": "0x" + "ab" * 32}
GOOD_MPC = {"protocol": "aby3", "model": "m", "weights_sha256": "0x" + "cd" * 32}


@pytest.mark.parametrize(
    ("data", "check"),
    [
        (b"", "descriptor"),
        (b"\xff\xfe", "descriptor"),
        (b"[]", "descriptor"),
        (b'{"descriptor": {}}', "descriptor"),
        (b'{"descriptor": 1, "signature": "0x00"}', "signature"),
        (WIRE.replace(b'"signature":"0x', b'"signature":"0X'), "signature"),
        (b'{"a": 1, "a": 2}', "descriptor"),
        (b'{"descriptor": 1.5, "signature": "0x"}', "descriptor"),
        (b'{"descriptor": NaN}', "descriptor"),
        (b"[" * 100_000, "descriptor"),
        (b" " * (600 * 1024), "descriptor"),
        (_without("models"), "descriptor"),
        (_with(extra=1), "descriptor"),
        (_with(type="something-else"), "descriptor.type"),
        (_with(version=2), "descriptor.version"),
        (_with(version=True), "descriptor.version"),
        (_with(address="0x" + "ab" * 20), "descriptor.address"),
        (_with(address=IDENTITY.address.lower()), "descriptor.address"),
        (_with(endpoint=""), "descriptor.endpoint"),
        (_with(endpoint="https://nöde"), "descriptor.endpoint"),
        (_with(endpoint="a b"), "descriptor.endpoint"),
        (_with(endpoint=["x"]), "descriptor.endpoint"),
        (_with(ohttp_keys="not base64!"), "descriptor.ohttp_keys"),
        (_with(ohttp_keys="AAEC"), "descriptor.ohttp_keys"),
        (_with(ohttp_keys=_body()["ohttp_keys"].rstrip("=")), "descriptor.ohttp_keys"),
        (_with(models=[]), "descriptor.models"),
        (_with(models={"id": "m"}), "descriptor.models"),
        (_with(models=[GOOD_MODEL, GOOD_MODEL]), "descriptor.models"),
        (_with(models=[{"id": "m"}]), "descriptor.models[0]"),
        (_with(models=[{**GOOD_MODEL, "id": "bad id"}]), "descriptor.models[0].id"),
        (
            _with(models=[{**GOOD_MODEL, "weights_sha256": "0x" + "AB" * 32}]),
            "descriptor.models[0].weights_sha256",
        ),
        (
            _with(models=[{**GOOD_MODEL, "weights_sha256": "0x" + "ab" * 31}]),
            "descriptor.models[0].weights_sha256",
        ),
        (_with(software="0x"), "descriptor.software"),
        (_with(software="0x" + "00" * 65), "descriptor.software"),
        (_with(evidence={"kind": "dev"}), "descriptor.evidence"),
        (_with(evidence={"kind": "TDX!", "data": "AA=="}), "descriptor.evidence.kind"),
        (_with(evidence={"kind": "dev", "data": ""}), "descriptor.evidence.data"),
        (_with(issued_at=-1), "descriptor.issued_at"),
        (_with(issued_at="1"), "descriptor.issued_at"),
        (_with(expires_at=_body()["issued_at"]), "descriptor.expires_at"),
        (_with(mpc=None), "descriptor.mpc"),
        (_with(mpc=[GOOD_MPC]), "descriptor.mpc"),
        (_with(mpc={"protocol": "aby3", "model": "m"}), "descriptor.mpc"),
        (_with(mpc={**GOOD_MPC, "link": "127.0.0.1:7101"}), "descriptor.mpc"),
        (_with(mpc={**GOOD_MPC, "protocol": "ABY3"}), "descriptor.mpc.protocol"),
        (_with(mpc={**GOOD_MPC, "protocol": ""}), "descriptor.mpc.protocol"),
        (_with(mpc={**GOOD_MPC, "protocol": 3}), "descriptor.mpc.protocol"),
        (_with(mpc={**GOOD_MPC, "model": "bad id"}), "descriptor.mpc.model"),
        (
            _with(mpc={**GOOD_MPC, "weights_sha256": "0x" + "cd" * 31}),
            "descriptor.mpc.weights_sha256",
        ),
        (_with(mpc={**GOOD_MPC, "weights_sha256": "cd" * 32}), "descriptor.mpc.weights_sha256"),
    ],
)
def test_malformed_descriptors_name_the_failed_check(data: bytes, check: str) -> None:
    with pytest.raises(DescriptorMalformed) as err:
        SignedDescriptor.parse(data)
    assert err.value.check == check


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_descriptor_errors(data: bytes) -> None:
    with pytest.raises(DescriptorError):
        load_descriptor(data, NOW)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(_body())), json_values, max_size=10), json_values)
def test_arbitrary_json_fields_only_raise_descriptor_errors(
    fields: dict, signature: object
) -> None:
    body = {**_body(), **fields}
    data = json.dumps({"descriptor": body, "signature": signature}).encode()
    with pytest.raises(DescriptorError):
        load_descriptor(data, NOW)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(WIRE) - 1), st.integers(1, 255))
def test_any_single_byte_change_is_refused(position: int, xor: int) -> None:
    data = bytearray(WIRE)
    data[position] ^= xor
    with pytest.raises(DescriptorError):
        load_descriptor(bytes(data), NOW)


def test_a_descriptor_without_mpc_is_unchanged_and_one_with_it_round_trips() -> None:
    assert "mpc" not in _body() and SIGNED.descriptor.mpc is None  # old descriptors stay valid
    party = MpcParty("aby3", "smollm2-135m-instruct", bytes.fromhex("cd" * 32))
    with_party = dev_descriptor(IDENTITY, KEYS, now=NOW, mpc=party)
    wire = with_party.encode()
    assert json.loads(wire)["descriptor"]["mpc"] == {
        "protocol": "aby3",
        "model": "smollm2-135m-instruct",
        "weights_sha256": "0x" + "cd" * 32,
    }
    loaded = load_descriptor(wire, NOW)
    assert loaded.descriptor.mpc == party and loaded.encode() == wire
    # the party is signed: adding, changing or dropping it breaks the signature
    with pytest.raises(DescriptorSignatureInvalid):
        load_descriptor(mutate_body(SIGNED, mpc=party.to_json()), NOW)
    with pytest.raises(DescriptorSignatureInvalid):
        load_descriptor(mutate_body(with_party, mpc={**party.to_json(), "protocol": "semi2k"}), NOW)
    dropped = json.loads(wire)
    del dropped["descriptor"]["mpc"]
    with pytest.raises(DescriptorSignatureInvalid):
        load_descriptor(json.dumps(dropped), NOW)


def test_model_entries_state_engine_and_weights_scope_when_given() -> None:
    assert set(_body()["models"][0]) == {"id", "weights_sha256"}  # old descriptors stay valid
    entry = ModelEntry(
        "smollm2-135m-instruct",
        bytes.fromhex("ab" * 32),
        engine="upstream",
        weights_scope="declared",
    )
    wire = dev_descriptor(IDENTITY, KEYS, now=NOW, models=(entry,)).encode()
    stated = json.loads(wire)["descriptor"]["models"][0]
    assert (stated["engine"], stated["weights_scope"]) == ("upstream", "declared")
    loaded = load_descriptor(wire, NOW)
    assert loaded.descriptor.models == (entry,) and loaded.encode() == wire
    bad = json.loads(wire)
    bad["descriptor"]["models"][0]["engine"] = "Not A Kind!"
    with pytest.raises(DescriptorMalformed) as refused:
        load_descriptor(json.dumps(bad), NOW)
    assert refused.value.check == "descriptor.models[0].engine"


model_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,20}", fullmatch=True)


@settings(max_examples=25, deadline=None)
@given(
    endpoint=st.from_regex(r"https://[a-z0-9.-]{1,30}(:[0-9]{1,5})?/?", fullmatch=True),
    models=st.lists(
        st.tuples(model_ids, st.binary(min_size=32, max_size=32)),
        min_size=1,
        max_size=4,
        unique_by=lambda m: m[0],
    ),
    software=st.binary(min_size=1, max_size=64),
    kind=st.from_regex(r"[a-z][a-z0-9-]{0,31}", fullmatch=True),
    evidence=st.binary(min_size=1, max_size=200),
    issued_at=st.integers(0, 2**40 - 2),
    lifetime=st.integers(1, 10**6),
    mpc=st.none()
    | st.builds(
        MpcParty,
        st.from_regex(r"[a-z][a-z0-9]{0,15}", fullmatch=True),
        model_ids,
        st.binary(min_size=32, max_size=32),
    ),
)
def test_any_valid_descriptor_round_trips(
    endpoint: str,
    models: list[tuple[str, bytes]],
    software: bytes,
    kind: str,
    evidence: bytes,
    issued_at: int,
    lifetime: int,
    mpc: MpcParty | None,
) -> None:
    descriptor = Descriptor(
        address=IDENTITY.address,
        endpoint=endpoint,
        ohttp_keys=KEYS.encoded_configs(),
        models=tuple(ModelEntry(i, h) for i, h in models),
        software=software,
        evidence=Evidence(kind, evidence),
        issued_at=issued_at,
        expires_at=min(issued_at + lifetime, 2**40),
        mpc=mpc,
    )
    wire = descriptor.sign(IDENTITY).encode()
    assert load_descriptor(wire, issued_at).descriptor == descriptor
