"""Fuzz: signed node descriptors and receipts (`veil.identity`), as bytes and as parsed JSON.

Property: `SignedDescriptor.parse`, `load_descriptor`, `Receipt.from_json` and the signature
and validity checks return a value or raise their `IdentityError` subclass; what parses
re-encodes to the same value; valid descriptors and receipts round-trip byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

from eth_utils import to_checksum_address
from fuzzkit import JSON_VALUES, deep_json, fuzz, json_inputs, mutated_json, outcome
from hypothesis import given
from hypothesis import strategies as st

from veil.identity import (
    Descriptor,
    DescriptorError,
    Evidence,
    ModelEntry,
    MpcParty,
    Receipt,
    ReceiptError,
    SignedDescriptor,
    check_receipt,
    load_descriptor,
)
from veil.identity.descriptor import MAX_DESCRIPTOR_BYTES
from veil.wire.ohttp import AEAD_AES_128_GCM, KDF_HKDF_SHA256, KeyConfig, SymmetricSuite
from veil.wire.ohttp import encode_key_configs as key_list

NOW = 1_700_000_000
addresses = st.binary(min_size=20, max_size=20).map(lambda b: to_checksum_address("0x" + b.hex()))
hash32 = st.binary(min_size=32, max_size=32)
signatures = st.binary(min_size=65, max_size=65)
model_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,20}", fullmatch=True)
key_configs = st.builds(
    KeyConfig,
    st.integers(0, 255),
    st.just(0x0020),
    hash32,
    st.just((SymmetricSuite(KDF_HKDF_SHA256, AEAD_AES_128_GCM),)),
)


@st.composite
def descriptors(draw: st.DrawFn) -> SignedDescriptor:
    ids = draw(st.lists(model_ids, min_size=1, max_size=3, unique=True))
    issued = draw(st.integers(0, 2**40 - 1))
    mpc = st.builds(
        MpcParty, st.from_regex(r"[a-z][a-z0-9]{0,15}", fullmatch=True), model_ids, hash32
    )
    body = Descriptor(
        address=draw(addresses),
        endpoint=draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)),
        ohttp_keys=key_list(draw(st.lists(key_configs, min_size=1, max_size=2))),
        models=tuple(ModelEntry(i, draw(hash32)) for i in ids),
        software=draw(st.binary(min_size=1, max_size=64)),
        evidence=Evidence(
            draw(st.from_regex(r"[a-z][a-z0-9-]{0,31}", fullmatch=True)),
            draw(st.binary(min_size=1, max_size=96)),
        ),
        issued_at=issued,
        expires_at=draw(st.integers(issued + 1, 2**40)),
        mpc=draw(st.none() | mpc),
    )
    return SignedDescriptor(body, draw(signatures))


receipts = st.builds(
    Receipt,
    addresses,
    hash32,
    hash32,
    hash32,
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    hash32,
    signatures,
)


def _wire_json(signed: SignedDescriptor) -> dict[str, Any]:
    return json.loads(signed.encode())


def _check_descriptor(raw: bytes | str, now: int = NOW) -> None:
    got, _ = outcome(lambda: SignedDescriptor.parse(raw), DescriptorError)
    if got is not None:
        assert SignedDescriptor.parse(got.encode()) == got
        assert got.descriptor.key_configs()
        outcome(got.verify_signature, DescriptorError)
        outcome(lambda: got.check_validity(now), DescriptorError)
    outcome(lambda: load_descriptor(raw, now), DescriptorError)


def _check_receipt(obj: Any) -> None:
    got, _ = outcome(lambda: Receipt.from_json(obj), ReceiptError)
    if got is not None:
        assert Receipt.from_json(got.encode()) == got == Receipt.from_json(got.to_json())
        outcome(
            lambda: check_receipt(got, got.node, request_digest=b"", answer_text=""), ReceiptError
        )


@fuzz(1)
@given(descriptors(), receipts)
def test_round_trip(signed: SignedDescriptor, receipt: Receipt) -> None:
    wire = signed.encode()
    assert SignedDescriptor.parse(wire) == signed
    assert SignedDescriptor.parse(wire).encode() == wire
    assert Descriptor.from_json(signed.descriptor.to_json()) == signed.descriptor
    assert Receipt.from_json(receipt.encode()) == receipt
    assert Receipt.from_json(receipt.encode()).encode() == receipt.encode()


@fuzz(4)
@given(descriptors().map(_wire_json).flatmap(json_inputs), st.integers(0, 2**41))
def test_mutated_descriptors(raw: bytes, now: int) -> None:
    _check_descriptor(raw, now)


@fuzz(2)
@given(descriptors().map(_wire_json).flatmap(lambda obj: mutated_json(obj["descriptor"])))
def test_mutated_descriptor_bodies(raw: bytes) -> None:
    """The body as a parsed object (`Descriptor.from_json`), where it skips the byte checks."""
    obj, _ = outcome(lambda: json.loads(raw), (ValueError, RecursionError))
    if obj is not None:
        outcome(lambda: Descriptor.from_json(obj), DescriptorError)


@fuzz(3)
@given(receipts.map(Receipt.to_json).flatmap(json_inputs))
def test_mutated_receipts(raw: bytes) -> None:
    _check_receipt(raw)
    _check_receipt(raw.decode("latin-1"))
    obj, _ = outcome(lambda: json.loads(raw), (ValueError, RecursionError))
    _check_receipt(obj)


@fuzz(1)
@given(deep_json(MAX_DESCRIPTOR_BYTES // 2))
def test_deep_nesting(raw: bytes) -> None:
    _check_descriptor(raw)
    _check_receipt(raw)


@fuzz(2)
@given(st.binary(max_size=256) | st.text(max_size=256).map(str.encode), JSON_VALUES)
def test_random_input(raw: bytes, value: Any) -> None:
    _check_descriptor(raw)
    _check_receipt(raw)
    _check_receipt(value)
    outcome(lambda: Descriptor.from_json(value), DescriptorError)
