"""Evidence of a failed check: what was asked, what the node answered and signed, and what the
validator found. Its hash goes into `Slasher.openChallenge`; another validator fetches the
bundle, re-runs the whole check itself (`recheck`) and votes only on what it verified.

The canonical encoding is sorted-key compact JSON in UTF-8, so every validator hashes the same
bytes. A bundle from outside is bounded (size, nesting) before it is decoded, and every field is
checked: anything else is `EvidenceMalformed`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from veil.engine import ROLES, ChatMessage, LoadedModel, encode_chat
from veil.errors import VeilError
from veil.identity.codec import to_bytes32
from veil.identity.errors import ReceiptError
from veil.identity.receipt import Receipt
from veil.validator.receipt_steps import check_receipt_steps
from veil.validator.verdict import (
    Answer,
    ChatRequest,
    Report,
    Tolerances,
    ValidatorError,
    check_answer,
)
from veil.wire import boundedjson
from veil.wire.errors import Malformed, MessageTooLarge

__all__ = [
    "BUNDLE_VERSION",
    "MAX_BUNDLE_BYTES",
    "EvidenceBundle",
    "EvidenceMalformed",
    "check_with_receipt",
    "parse_bundle",
    "recheck",
]

BUNDLE_VERSION = 1
MAX_BUNDLE_BYTES = 4 * 1024 * 1024  # a long answer's token ids and text fit many times over
MAX_BUNDLE_DEPTH = 8  # the bundle nests 4 deep


class EvidenceMalformed(ValidatorError):
    """An evidence bundle that is too large, too deep, not JSON or missing/mistyping a field."""


@dataclass(frozen=True)
class EvidenceBundle:
    """One checked answer: the canary (or disputed) request, the node's answer and signed
    receipt, the payment it was made with, and the validator's report."""

    node: str  # the address the answer came from (the receipt must be signed by it)
    model_hash: bytes  # 32: the approved weights the node was registered to serve
    payment_id: bytes  # 32: the ticket id paid, or tokens_payment_id of the tokens
    request: ChatRequest
    answer: Answer
    prompt_tokens: int  # the usage the node reported with the answer
    receipt: Receipt
    report: Report = field(default_factory=Report)

    def to_json(self) -> dict[str, Any]:
        r, a = self.request, self.answer
        return {
            "version": BUNDLE_VERSION,
            "node": self.node,
            "model_hash": "0x" + self.model_hash.hex(),
            "payment_id": "0x" + self.payment_id.hex(),
            "request": {
                "messages": [{"role": m.role, "content": m.content} for m in r.messages],
                "max_tokens": r.max_tokens,
                "temperature": float(r.temperature),
                "top_p": float(r.top_p),
                "top_k": r.top_k,
                "seed": r.seed,
                "stop": list(r.stop),
            },
            "answer": {
                "token_ids": list(a.token_ids),
                "text": a.text,
                "finish_reason": a.finish_reason,
                "usage": {
                    "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": a.completion_tokens,
                },
            },
            "receipt": self.receipt.to_json(),
            "report": self.report.as_dict(),
        }

    def encode(self) -> bytes:
        """The canonical bytes: sorted keys, no spaces, UTF-8."""
        return json.dumps(
            self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")

    def evidence_hash(self) -> bytes:
        """sha256 of the canonical bytes: the 32 bytes `Slasher.openChallenge` takes."""
        return hashlib.sha256(self.encode()).digest()


def check_with_receipt(
    reference: LoadedModel,
    request: ChatRequest,
    answer: Answer,
    receipt: Receipt,
    *,
    node: str,
    payment_id: bytes,
    tolerances: Tolerances | None = None,
    model: Any = None,
) -> Report:
    """The whole check of one answer: its receipt against the reference's approved weights and
    the payment made, then the answer re-scored. Never raises on a bad answer or receipt."""
    report = Report()
    try:
        prompt_tokens = len(encode_chat(reference.tokenizer, list(request.messages)))
    except VeilError as err:  # the reference cannot read the request: nothing to re-score
        report.add("request", False, f"the request is not a chat the model takes: {err}")
        return report
    check_receipt_steps(
        report,
        receipt,
        node=node,
        answer=answer,
        approved_model_hash=reference.weights_sha256,
        payment_id=payment_id,
        prompt_tokens=prompt_tokens,
    )
    report.steps.extend(check_answer(reference, request, answer, tolerances, model=model).steps)
    return report


def recheck(
    bundle: EvidenceBundle,
    reference: LoadedModel,
    tolerances: Tolerances | None = None,
) -> Report:
    """Re-run the check from the bundle alone and return this validator's own report (the
    bundle's report is the challenger's claim and is not trusted). `ValidatorError` when the
    reference is not the model the bundle names: this validator cannot judge it."""
    if bundle.model_hash.hex() != reference.weights_sha256.lower():
        raise ValidatorError(
            f"the bundle names weights 0x{bundle.model_hash.hex()}, the reference is "
            f"{reference.weights_sha256}"
        )
    return check_with_receipt(
        reference,
        bundle.request,
        bundle.answer,
        bundle.receipt,
        node=bundle.node,
        payment_id=bundle.payment_id,
        tolerances=tolerances,
    )


def parse_bundle(data: bytes | str) -> EvidenceBundle:
    """A bundle from outside, bounded before decoding; `EvidenceMalformed` for anything else."""
    try:
        obj = boundedjson.loads(
            data, max_bytes=MAX_BUNDLE_BYTES, max_depth=MAX_BUNDLE_DEPTH, what="evidence bundle"
        )
    except (Malformed, MessageTooLarge) as err:
        raise EvidenceMalformed(str(err)) from None
    top = _obj(obj, "bundle")
    if top.get("version") != BUNDLE_VERSION:
        raise EvidenceMalformed(f"bundle version must be {BUNDLE_VERSION}")
    req = _obj(top.get("request"), "request")
    ans = _obj(top.get("answer"), "answer")
    usage = _obj(ans.get("usage"), "answer.usage")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise EvidenceMalformed("request.messages must be a non-empty list")
    msgs = []
    for m in messages:
        m = _obj(m, "request.messages[]")
        role = _str(m, "role")
        if role not in ROLES:
            raise EvidenceMalformed(f"request.messages[].role must be one of {', '.join(ROLES)}")
        msgs.append(ChatMessage(role, _str(m, "content")))
    stop = req.get("stop")
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise EvidenceMalformed("request.stop must be a list of strings")
    seed = req.get("seed")
    if seed is not None:
        seed = _int(req, "seed", lo=-(2**63))
    token_ids = ans.get("token_ids")
    if not isinstance(token_ids, list) or not all(_is_int(t) for t in token_ids):
        raise EvidenceMalformed("answer.token_ids must be a list of integers")
    try:
        receipt = Receipt.from_json(top.get("receipt"))
    except ReceiptError as err:
        raise EvidenceMalformed(f"receipt: {err}") from None
    node = _str(top, "node")
    try:
        model_hash = to_bytes32(_str(top, "model_hash"), what="model_hash")
        payment_id = to_bytes32(_str(top, "payment_id"), what="payment_id")
    except ValueError as err:
        raise EvidenceMalformed(str(err)) from None
    return EvidenceBundle(
        node=node,
        model_hash=model_hash,
        payment_id=payment_id,
        request=ChatRequest(
            messages=tuple(msgs),
            max_tokens=_int(req, "max_tokens", lo=1),
            temperature=_float(req, "temperature"),
            top_p=_float(req, "top_p"),
            top_k=_int(req, "top_k"),
            seed=seed,
            stop=tuple(stop),
        ),
        answer=Answer(
            token_ids=tuple(token_ids),
            text=_str(ans, "text"),
            finish_reason=_str(ans, "finish_reason"),
            completion_tokens=_int(usage, "completion_tokens"),
        ),
        prompt_tokens=_int(usage, "prompt_tokens"),
        receipt=receipt,
        report=_report(top.get("report")),
    )


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EvidenceMalformed(f"{what} must be an object")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise EvidenceMalformed(f"{key} must be a string")
    return value


def _int(obj: dict[str, Any], key: str, *, lo: int = 0, hi: int = 2**63 - 1) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise EvidenceMalformed(f"{key} must be an integer in [{lo}, {hi}]")
    return value


def _float(obj: dict[str, Any], key: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1e6:
        raise EvidenceMalformed(f"{key} must be a non-negative number")
    return float(value)


def _report(value: Any) -> Report:
    steps = _obj(value, "report").get("steps")
    if not isinstance(steps, list):
        raise EvidenceMalformed("report.steps must be a list")
    report = Report()
    for s in steps:
        s = _obj(s, "report.steps[]")
        ok = s.get("ok")
        if not isinstance(ok, bool):
            raise EvidenceMalformed("report step ok must be true or false")
        report.add(_str(s, "name"), ok, _str(s, "reason"))
    return report
