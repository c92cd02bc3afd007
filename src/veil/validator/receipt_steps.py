"""The receipt half of a check: the node's signed word must match what the validator saw.

Each step fails with a reason instead of raising, so a forged or mismatched receipt is a finding
in the report (and evidence), never a crash of the validator.
"""

from __future__ import annotations

from veil.identity.codec import to_bytes32
from veil.identity.errors import ReceiptError
from veil.identity.receipt import Receipt, answer_digest, check_receipt
from veil.validator.verdict import Answer, Report

RECEIPT_STEPS = ("signature", "answer_digest", "model_hash", "counts", "payment")


def check_receipt_steps(
    report: Report,
    receipt: Receipt,
    *,
    node: str,
    answer: Answer,
    approved_model_hash: bytes | str,
    payment_id: bytes,
    prompt_tokens: int | None = None,
) -> None:
    """Add the steps of `RECEIPT_STEPS` to `report`: signed by `node`, for `answer`'s text,
    naming the approved weights, counting the answer's tokens, naming the payment made."""
    try:
        check_receipt(receipt, node)
        report.add("signature", True, f"signed by the node {node}")
    except (ReceiptError, ValueError) as err:
        report.add("signature", False, f"{err}")
    digest_ok = receipt.answer_digest == answer_digest(answer.text)
    report.add(
        "answer_digest",
        digest_ok,
        "the receipt is for this answer text"
        if digest_ok
        else "the receipt's answer digest is not this answer's",
    )
    try:
        approved = to_bytes32(approved_model_hash, what="model_hash")
    except ValueError:
        report.add("model_hash", False, "the approved weights hash is not 32 bytes")
    else:
        report.add(
            "model_hash",
            receipt.model_hash == approved,
            "the receipt names the approved weights"
            if receipt.model_hash == approved
            else f"the receipt names weights 0x{receipt.model_hash.hex()}, not the approved ones",
        )
    counts_ok = receipt.completion_tokens == answer.completion_tokens and (
        prompt_tokens is None or receipt.prompt_tokens == prompt_tokens
    )
    report.add(
        "counts",
        counts_ok,
        f"receipt counts {receipt.prompt_tokens}+{receipt.completion_tokens} tokens; the answer"
        f" has {'?' if prompt_tokens is None else prompt_tokens}+{answer.completion_tokens}",
    )
    report.add(
        "payment",
        receipt.ticket_id == payment_id,
        "the receipt names the payment made"
        if receipt.ticket_id == payment_id
        else "the receipt names another payment than the one made",
    )
