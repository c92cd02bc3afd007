"""Receipt steps: an honest receipt passes every step; each tampered field fails at its step."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from veil.identity import NodeIdentity, sign_receipt
from veil.identity.credits.token import tokens_payment_id
from veil.identity.receipt import Receipt
from veil.validator import Answer, Report
from veil.validator.receipt_steps import RECEIPT_STEPS, check_receipt_steps

MODEL = hashlib.sha256(b"approved weights").digest()
TICKET = hashlib.sha256(b"ticket").digest()
ANSWER = Answer(token_ids=(1, 2, 3), text="Paris.", finish_reason="stop", completion_tokens=4)


@pytest.fixture(scope="module")
def node() -> NodeIdentity:
    return NodeIdentity.generate()


def _receipt(node: NodeIdentity, **kw) -> Receipt:  # type: ignore[no-untyped-def]
    args = dict(
        request_digest=bytes(32),
        answer_text=ANSWER.text,
        model_hash=MODEL,
        prompt_tokens=12,
        completion_tokens=4,
        ticket_id=TICKET,
    )
    args.update(kw)
    return sign_receipt(node, **args)  # type: ignore[arg-type]


def _report(receipt: Receipt, node: NodeIdentity, answer: Answer = ANSWER) -> Report:
    report = Report()
    check_receipt_steps(
        report,
        receipt,
        node=node.address,
        answer=answer,
        approved_model_hash=MODEL.hex(),
        payment_id=TICKET,
        prompt_tokens=12,
    )
    return report


def test_honest_receipt_passes(node: NodeIdentity) -> None:
    report = _report(_receipt(node), node)
    assert report.passed, report.as_dict()
    assert [s.name for s in report.steps] == list(RECEIPT_STEPS)


@pytest.mark.parametrize(
    ("tamper", "step"),
    [
        ({"answer_text": "London."}, "answer_digest"),
        ({"model_hash": hashlib.sha256(b"cheaper").digest()}, "model_hash"),
        ({"completion_tokens": 5}, "counts"),
        ({"prompt_tokens": 11}, "counts"),
        ({"ticket_id": hashlib.sha256(b"another ticket").digest()}, "payment"),
    ],
)
def test_signed_wrong_field_fails_at_its_step(node: NodeIdentity, tamper: dict, step: str) -> None:  # type: ignore[type-arg]
    report = _report(_receipt(node, **tamper), node)
    assert report.failed() == [step], report.as_dict()


@pytest.mark.parametrize(
    ("field", "value", "failed"),
    [
        ("completion_tokens", 9, ["signature", "counts"]),
        ("ticket_id", bytes(32), ["signature", "payment"]),
        ("signature", b"\x01" * 65, ["signature"]),
    ],
)
def test_field_changed_after_signing_fails_signature(
    node: NodeIdentity, field: str, value: object, failed: list[str]
) -> None:
    report = _report(dataclasses.replace(_receipt(node), **{field: value}), node)
    assert report.failed() == failed, report.as_dict()


def test_receipt_from_another_node_fails_signature(node: NodeIdentity) -> None:
    other = NodeIdentity.generate()
    report = _report(_receipt(other), node)
    assert report.failed() == ["signature"]
    assert other.address in report.steps[0].reason


def test_tokens_payment_id_is_checked(node: NodeIdentity) -> None:
    pid = tokens_payment_id([])
    report = Report()
    check_receipt_steps(
        report,
        _receipt(node, ticket_id=pid),
        node=node.address,
        answer=ANSWER,
        approved_model_hash=MODEL,
        payment_id=pid,
    )
    assert report.passed, report.as_dict()
