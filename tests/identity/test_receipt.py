"""EIP-712 receipts: round trip, any changed field, other node / request / answer / model."""

from __future__ import annotations

import dataclasses
import json

import pytest
from eth_abi import encode as abi_encode
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.identity import (
    Receipt,
    ReceiptDomain,
    ReceiptError,
    ReceiptMalformed,
    ReceiptMismatch,
    ReceiptSignatureInvalid,
    answer_digest,
    request_digest,
    sign_receipt,
    verify_receipt,
)
from veil.identity.receipt import RECEIPT_TYPE_STRING, ZERO_TICKET, check_receipt

NODE = __import__("veil.identity", fromlist=["NodeIdentity"]).NodeIdentity.generate()
REQUEST = request_digest(b"encapsulated request bytes")
ANSWER = "Bonjour! ¿Qué tal? 🙂"
MODEL = "ab" * 32
TICKET = b"\x42" * 32
RECEIPT = sign_receipt(NODE, REQUEST, ANSWER, MODEL, 12, 7, TICKET, timestamp=1_700_000_000)


def test_sign_and_verify() -> None:
    verify_receipt(RECEIPT, NODE.address, REQUEST, ANSWER, bytes.fromhex(MODEL))
    verify_receipt(RECEIPT, NODE.address.lower(), REQUEST, ANSWER, "0x" + MODEL)
    assert RECEIPT.answer_digest == answer_digest(ANSWER)
    assert RECEIPT.ticket_id == TICKET


def test_json_form_round_trips() -> None:
    form = RECEIPT.to_json()
    assert form["request_digest"] == "0x" + REQUEST.hex()
    assert Receipt.from_json(form) == RECEIPT
    assert Receipt.from_json(RECEIPT.encode()) == RECEIPT
    assert Receipt.from_json(json.dumps(form)) == RECEIPT


def test_no_ticket_is_zero() -> None:
    receipt = sign_receipt(NODE, REQUEST, ANSWER, MODEL, 1, 1)
    assert receipt.ticket_id == ZERO_TICKET
    verify_receipt(receipt, NODE.address, REQUEST, ANSWER, MODEL)


def test_eip712_digest_matches_the_contract_type_string() -> None:
    """What a Vyper/Solidity contract computes from RECEIPT_TYPE_STRING equals what we sign."""
    domain_type = keccak(text="EIP712Domain(string name,string version)")
    domain_sep = keccak(
        abi_encode(
            ["bytes32", "bytes32", "bytes32"],
            [domain_type, keccak(text="Veil Receipt"), keccak(text="1")],
        )
    )
    struct = keccak(
        abi_encode(
            [
                "bytes32",
                "address",
                "bytes32",
                "bytes32",
                "bytes32",
                "uint32",
                "uint32",
                "uint64",
                "bytes32",
            ],
            [
                keccak(text=RECEIPT_TYPE_STRING),
                RECEIPT.node,
                RECEIPT.request_digest,
                RECEIPT.answer_digest,
                RECEIPT.model_hash,
                RECEIPT.prompt_tokens,
                RECEIPT.completion_tokens,
                RECEIPT.timestamp,
                RECEIPT.ticket_id,
            ],
        )
    )
    message = RECEIPT.message()
    assert b"\x19" + message.version + message.header + message.body == (
        b"\x19\x01" + domain_sep + struct
    )


CHANGES = {
    "request_digest": b"\x01" * 32,
    "answer_digest": b"\x02" * 32,
    "model_hash": b"\x03" * 32,
    "prompt_tokens": 13,
    "completion_tokens": 8,
    "timestamp": 1_700_000_001,
    "ticket_id": b"\x43" * 32,
}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_any_changed_field_is_refused(field: str) -> None:
    changed = dataclasses.replace(RECEIPT, **{field: CHANGES[field]})
    with pytest.raises(ReceiptSignatureInvalid) as err:
        check_receipt(changed, NODE.address)
    assert err.value.check == "signature"


def test_changed_node_field_is_refused() -> None:
    other = NODE.__class__.generate()
    changed = dataclasses.replace(RECEIPT, node=other.address)
    with pytest.raises(ReceiptSignatureInvalid):
        verify_receipt(changed, other.address, REQUEST, ANSWER, MODEL)


def test_receipt_from_another_node_is_refused() -> None:
    other = NODE.__class__.generate()
    theirs = sign_receipt(other, REQUEST, ANSWER, MODEL, 12, 7)
    with pytest.raises(ReceiptSignatureInvalid) as err:
        verify_receipt(theirs, NODE.address, REQUEST, ANSWER, MODEL)
    assert err.value.check == "signer"


@pytest.mark.parametrize(
    ("args", "check"),
    [
        ((request_digest(b"another request"), ANSWER, MODEL), "request_digest"),
        ((REQUEST, ANSWER + " ", MODEL), "answer_digest"),
        ((REQUEST, "", MODEL), "answer_digest"),
        ((REQUEST, ANSWER, "cd" * 32), "model_hash"),
    ],
)
def test_receipt_for_another_request_answer_or_model_is_refused(args: tuple, check: str) -> None:
    with pytest.raises(ReceiptMismatch) as err:
        verify_receipt(RECEIPT, NODE.address, *args)
    assert err.value.check == check


def test_another_domain_is_refused() -> None:
    domain = ReceiptDomain(chain_id=31337, verifying_contract="0x" + "11" * 20)
    signed = sign_receipt(NODE, REQUEST, ANSWER, MODEL, 1, 1, domain=domain)
    verify_receipt(signed, NODE.address, REQUEST, ANSWER, MODEL, domain=domain)
    with pytest.raises(ReceiptSignatureInvalid):
        verify_receipt(signed, NODE.address, REQUEST, ANSWER, MODEL)


@pytest.mark.parametrize(
    ("change", "check"),
    [
        ({"node": "0x" + "ab" * 20}, "receipt.node"),
        ({"request_digest": "0x" + "00" * 31}, "receipt.request_digest"),
        ({"answer_digest": "00" * 32}, "receipt.answer_digest"),
        ({"model_hash": 5}, "receipt.model_hash"),
        ({"prompt_tokens": -1}, "receipt.prompt_tokens"),
        ({"completion_tokens": 2**32}, "receipt.completion_tokens"),
        ({"timestamp": 1.5}, "receipt.timestamp"),
        ({"ticket_id": None}, "receipt.ticket_id"),
        ({"signature": "0x" + "00" * 64}, "receipt.signature"),
        ({"extra": 1}, "receipt"),
    ],
)
def test_malformed_receipts_name_the_field(change: dict, check: str) -> None:
    with pytest.raises(ReceiptMalformed) as err:
        Receipt.from_json({**RECEIPT.to_json(), **change})
    assert err.value.check == check


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_garbage_receipts_are_typed_errors(data: bytes) -> None:
    with pytest.raises(ReceiptError):
        Receipt.from_json(data)


def test_zero_signature_does_not_recover() -> None:
    broken = dataclasses.replace(RECEIPT, signature=b"\x00" * 65)
    with pytest.raises(ReceiptSignatureInvalid):
        verify_receipt(broken, NODE.address, REQUEST, ANSWER, MODEL)


@pytest.mark.parametrize("tokens", [-1, 2**32, 1.0, True])
def test_sign_refuses_bad_token_counts(tokens: object) -> None:
    with pytest.raises(ValueError):
        sign_receipt(NODE, REQUEST, ANSWER, MODEL, tokens, 1)  # type: ignore[arg-type]


def test_sign_refuses_bad_digests() -> None:
    with pytest.raises(ValueError, match="request_digest"):
        sign_receipt(NODE, b"short", ANSWER, MODEL, 1, 1)
    with pytest.raises(ValueError, match="model_hash"):
        sign_receipt(NODE, REQUEST, ANSWER, "zz", 1, 1)
