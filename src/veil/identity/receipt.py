"""Signed receipts (EIP-712): the node's word that it produced this answer to this request.

One receipt ends every answer. It is signed as the EIP-712 struct

    Receipt(address node,bytes32 requestDigest,bytes32 answerDigest,bytes32 modelHash,
            uint32 promptTokens,uint32 completionTokens,uint64 timestamp,bytes32 ticketId)

under the domain `{name: "Veil Receipt", version: "1"}` plus, once a contract checks receipts,
its `chainId` and `verifyingContract`; a contract recovers the signer with `ecrecover`.

* `requestDigest` = sha256 of the encapsulated request bytes as the relay carried them (the
  whole `message/ohttp-req` or `message/ohttp-chunked-req` body): the client keeps what it sent,
  the gateway sees the same bytes, and nobody else can link the receipt to a prompt.
* `answerDigest` = sha256 of the UTF-8 completion text: the concatenation of every
  `delta.content` (streamed) or the `message.content` (not streamed) of choice 0. Both ends can
  compute it while streaming, and it does not depend on chunk boundaries or JSON spelling.
* `modelHash` = the weights sha256 (`veil.engine.model.weights_digest`).
* `ticketId` = the payment ticket's id, or 32 zero bytes when there is none.

The JSON form (`Receipt.to_json`) uses 0x hex for bytes and goes in the `veil_receipt` field of
the final streamed chunk, or top-level in a non-streamed answer.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from typing import Any

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data

from veil.identity.account import NodeIdentity
from veil.identity.codec import (
    canonical_json,
    get_address,
    get_hex,
    get_int,
    hex0x,
    parse_json_object,
    require_fields,
    to_bytes32,
)
from veil.identity.errors import (
    ReceiptMalformed,
    ReceiptMismatch,
    ReceiptSignatureInvalid,
)

__all__ = [
    "DEFAULT_RECEIPT_DOMAIN",
    "RECEIPT_CHECKS",
    "RECEIPT_TYPES",
    "RECEIPT_TYPE_STRING",
    "ZERO_TICKET",
    "Receipt",
    "ReceiptDomain",
    "answer_digest",
    "check_receipt",
    "request_digest",
    "sign_receipt",
    "verify_receipt",
]

RECEIPT_TYPES: dict[str, list[dict[str, str]]] = {
    "Receipt": [
        {"name": "node", "type": "address"},
        {"name": "requestDigest", "type": "bytes32"},
        {"name": "answerDigest", "type": "bytes32"},
        {"name": "modelHash", "type": "bytes32"},
        {"name": "promptTokens", "type": "uint32"},
        {"name": "completionTokens", "type": "uint32"},
        {"name": "timestamp", "type": "uint64"},
        {"name": "ticketId", "type": "bytes32"},
    ]
}
# The string a contract hashes for its type hash: keccak256(RECEIPT_TYPE_STRING).
RECEIPT_TYPE_STRING = (
    "Receipt(address node,bytes32 requestDigest,bytes32 answerDigest,bytes32 modelHash,"
    "uint32 promptTokens,uint32 completionTokens,uint64 timestamp,bytes32 ticketId)"
)
ZERO_TICKET = bytes(32)
# The checks `verify_receipt` makes, in order; errors name one of them in `check`.
RECEIPT_CHECKS = ("signature", "signer", "request_digest", "answer_digest", "model_hash")
_JSON_FIELDS = frozenset(
    {
        "node",
        "request_digest",
        "answer_digest",
        "model_hash",
        "prompt_tokens",
        "completion_tokens",
        "timestamp",
        "ticket_id",
        "signature",
    }
)


@dataclass(frozen=True)
class ReceiptDomain:
    """The EIP-712 domain; chain id and contract are set once a contract verifies receipts."""

    name: str = "Veil Receipt"
    version: str = "1"
    chain_id: int | None = None
    verifying_contract: str | None = None

    def to_eip712(self) -> dict[str, Any]:
        domain: dict[str, Any] = {"name": self.name, "version": self.version}
        if self.chain_id is not None:
            domain["chainId"] = self.chain_id
        if self.verifying_contract is not None:
            domain["verifyingContract"] = self.verifying_contract
        return domain


DEFAULT_RECEIPT_DOMAIN = ReceiptDomain()


def request_digest(encapsulated_request: bytes) -> bytes:
    """sha256 of the encapsulated request body, as sent to (and received from) the relay."""
    return hashlib.sha256(encapsulated_request).digest()


def answer_digest(answer_text: str) -> bytes:
    """sha256 of the UTF-8 completion text (choice 0, all deltas concatenated)."""
    return hashlib.sha256(answer_text.encode("utf-8")).digest()


@dataclass(frozen=True)
class Receipt:
    node: str  # EIP-55 address of the signing node
    request_digest: bytes  # 32
    answer_digest: bytes  # 32
    model_hash: bytes  # 32
    prompt_tokens: int
    completion_tokens: int
    timestamp: int  # UNIX seconds at the node when the answer ended
    ticket_id: bytes  # 32: the ticket id, or tokens_payment_id of the tokens; ZERO_TICKET: unpaid
    signature: bytes = b""  # 65 bytes r || s || v

    def message(self, domain: ReceiptDomain = DEFAULT_RECEIPT_DOMAIN) -> SignableMessage:
        """The EIP-712 message the signature covers."""
        return encode_typed_data(
            domain.to_eip712(),
            RECEIPT_TYPES,
            {
                "node": self.node,
                "requestDigest": self.request_digest,
                "answerDigest": self.answer_digest,
                "modelHash": self.model_hash,
                "promptTokens": self.prompt_tokens,
                "completionTokens": self.completion_tokens,
                "timestamp": self.timestamp,
                "ticketId": self.ticket_id,
            },
        )

    def signer(self, domain: ReceiptDomain = DEFAULT_RECEIPT_DOMAIN) -> str:
        """The address the signature recovers to."""
        try:
            return str(Account.recover_message(self.message(domain), signature=self.signature))
        except Exception:  # eth_keys raises several types for a bad signature
            raise ReceiptSignatureInvalid("signature does not recover to a key") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "request_digest": hex0x(self.request_digest),
            "answer_digest": hex0x(self.answer_digest),
            "model_hash": hex0x(self.model_hash),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "timestamp": self.timestamp,
            "ticket_id": hex0x(self.ticket_id),
            "signature": hex0x(self.signature),
        }

    def encode(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, obj: Any) -> Receipt:
        """A receipt from its JSON form (a parsed object, or its text / bytes)."""
        if isinstance(obj, str | bytes):
            obj = parse_json_object(obj, ReceiptMalformed, check="receipt", max_bytes=4096)
        if not isinstance(obj, dict):
            raise ReceiptMalformed("not a JSON object", check="receipt")
        err = ReceiptMalformed
        require_fields(obj, _JSON_FIELDS, err, check="receipt")
        return cls(
            node=get_address(obj, "node", err, check="receipt.node"),
            request_digest=get_hex(
                obj, "request_digest", err, check="receipt.request_digest", length=32
            ),
            answer_digest=get_hex(
                obj, "answer_digest", err, check="receipt.answer_digest", length=32
            ),
            model_hash=get_hex(obj, "model_hash", err, check="receipt.model_hash", length=32),
            prompt_tokens=get_int(
                obj, "prompt_tokens", err, check="receipt.prompt_tokens", hi=2**32 - 1
            ),
            completion_tokens=get_int(
                obj, "completion_tokens", err, check="receipt.completion_tokens", hi=2**32 - 1
            ),
            timestamp=get_int(obj, "timestamp", err, check="receipt.timestamp"),
            ticket_id=get_hex(obj, "ticket_id", err, check="receipt.ticket_id", length=32),
            signature=get_hex(obj, "signature", err, check="receipt.signature", length=65),
        )


def sign_receipt(
    identity: NodeIdentity,
    request_digest: bytes,
    answer_text: str,
    model_hash: bytes | str,
    prompt_tokens: int,
    completion_tokens: int,
    ticket_id: bytes | None = None,
    *,
    timestamp: int | None = None,
    domain: ReceiptDomain = DEFAULT_RECEIPT_DOMAIN,
) -> Receipt:
    """The node's receipt for one answer; call it once the answer's text is complete.

    `model_hash` may be bytes or hex (as `LoadedModel.weights_sha256`).
    """
    for name, count in (("prompt_tokens", prompt_tokens), ("completion_tokens", completion_tokens)):
        if type(count) is not int or not 0 <= count < 2**32:
            raise ValueError(f"{name} must be an integer in [0, 2**32)")
    unsigned = Receipt(
        node=identity.address,
        request_digest=to_bytes32(request_digest, what="request_digest"),
        answer_digest=answer_digest(answer_text),
        model_hash=to_bytes32(model_hash, what="model_hash"),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        timestamp=int(time.time()) if timestamp is None else timestamp,
        ticket_id=ZERO_TICKET if ticket_id is None else to_bytes32(ticket_id, what="ticket_id"),
    )
    return replace(unsigned, signature=identity.sign_typed(unsigned.message(domain)))


def check_receipt(
    receipt: Receipt,
    expected_signer: str,
    *,
    request_digest: bytes | None = None,
    answer_text: str | None = None,
    model_hash: bytes | str | None = None,
    domain: ReceiptDomain = DEFAULT_RECEIPT_DOMAIN,
) -> list[str]:
    """The checks of `RECEIPT_CHECKS` that passed; the ones whose input is None are not made.

    Raises `ReceiptSignatureInvalid` / `ReceiptMismatch` (its `check` naming the failed one).
    """
    passed = []
    signer = receipt.signer(domain)
    if signer != receipt.node:
        raise ReceiptSignatureInvalid(f"signed by {signer}, not by the node it names")
    passed.append("signature")
    if signer.lower() != expected_signer.lower():
        raise ReceiptSignatureInvalid(
            f"signed by {signer}, not by the expected node {expected_signer}", check="signer"
        )
    passed.append("signer")
    if request_digest is not None:
        if receipt.request_digest != request_digest:
            raise ReceiptMismatch("receipt is for another request", check="request_digest")
        passed.append("request_digest")
    if answer_text is not None:
        if receipt.answer_digest != answer_digest(answer_text):
            raise ReceiptMismatch("receipt is for another answer", check="answer_digest")
        passed.append("answer_digest")
    if model_hash is not None:
        if receipt.model_hash != to_bytes32(model_hash, what="model_hash"):
            raise ReceiptMismatch("receipt names another model", check="model_hash")
        passed.append("model_hash")
    return passed


def verify_receipt(
    receipt: Receipt,
    expected_signer: str,
    request_digest: bytes,
    answer_text: str,
    model_hash: bytes | str,
    *,
    domain: ReceiptDomain = DEFAULT_RECEIPT_DOMAIN,
) -> None:
    """Refuse (typed `ReceiptError`) unless `expected_signer` signed exactly this answer."""
    check_receipt(
        receipt,
        expected_signer,
        request_digest=request_digest,
        answer_text=answer_text,
        model_hash=model_hash,
        domain=domain,
    )
