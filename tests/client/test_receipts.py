"""Client receipts: verification against the verified node, and the local store's history."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from support.attestation import MODEL_HASH, TDX_NOW, dev_descriptor
from veil.attest.policy import Policy, verify_node
from veil.client import HistoryLocked, ReceiptStoreError
from veil.client.receipts import ReceiptStore, default_receipts_path, verify_receipt
from veil.identity import (
    NodeIdentity,
    ReceiptMismatch,
    ReceiptSignatureInvalid,
    request_digest,
    sign_receipt,
)
from veil.node.keys import NodeKeys

FAST = 2**10
NODE = NodeIdentity.generate()
SENT = b"sealed request bytes as sent to the relay"
PROMPT = "what is the capital of Burkina Faso?"
ANSWER = "Ouagadougou."


def receipt_for(sent: bytes = SENT, answer: str = ANSWER, node: NodeIdentity = NODE):
    return sign_receipt(node, request_digest(sent), answer, MODEL_HASH, 9, 4)


def test_client_verifies_against_the_verified_node() -> None:
    report = verify_node(
        dev_descriptor(NODE, NodeKeys.generate()).encode(),
        Policy.for_mode("anonymous"),
        TDX_NOW + 5,
    )
    assert report.address is not None
    verify_receipt(receipt_for(), report.address, request_digest(SENT), ANSWER, MODEL_HASH)
    with pytest.raises(ReceiptSignatureInvalid):
        verify_receipt(
            receipt_for(node=NodeIdentity.generate()),
            report.address,
            request_digest(SENT),
            ANSWER,
            MODEL_HASH,
        )
    with pytest.raises(ReceiptMismatch):
        verify_receipt(receipt_for(), report.address, request_digest(b"x"), ANSWER, MODEL_HASH)


def test_store_without_history_never_writes_prompts(tmp_path: Path) -> None:
    path = tmp_path / "veil" / "receipts.sqlite"
    receipt = receipt_for()
    with ReceiptStore.open(path) as store:
        assert not store.history_enabled
        store.add(receipt, model_id="m", prompt=PROMPT, answer=ANSWER)
        stored = store.receipts()
        assert [s.receipt for s in stored] == [receipt]
        assert stored[0].model_id == "m" and not stored[0].has_history
        with pytest.raises(HistoryLocked):
            store.history(receipt.request_digest)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    raw = path.read_bytes()
    assert PROMPT.encode() not in raw and ANSWER.encode() not in raw


def test_history_with_passphrase_is_encrypted_at_rest(tmp_path: Path) -> None:
    path = tmp_path / "receipts.sqlite"
    receipt = receipt_for()
    with ReceiptStore.open(path, passphrase="hunter2", scrypt_n=FAST) as store:
        store.add(receipt, prompt=PROMPT, answer=ANSWER)
        assert store.receipts()[0].has_history
    raw = path.read_bytes()
    assert PROMPT.encode() not in raw and ANSWER.encode() not in raw
    with ReceiptStore.open(path, passphrase="hunter2") as store:
        assert store.history(receipt.request_digest) == (PROMPT, ANSWER)
    with pytest.raises(HistoryLocked):
        ReceiptStore.open(path, passphrase="wrong")
    with ReceiptStore.open(path) as store:  # receipts stay readable, history stays locked
        assert len(store.receipts()) == 1
        with pytest.raises(HistoryLocked):
            store.history(receipt.request_digest)


def test_swapped_ciphertexts_do_not_open(tmp_path: Path) -> None:
    path = tmp_path / "receipts.sqlite"
    first, second = receipt_for(b"one"), receipt_for(b"two", "another answer")
    with ReceiptStore.open(path, passphrase="pw", scrypt_n=FAST) as store:
        store.add(first, prompt="p1", answer="a1")
        store.add(second, prompt="p2", answer="a2")
    db = sqlite3.connect(path)
    with db:
        db.execute(
            "UPDATE receipts SET prompt_sealed = (SELECT answer_sealed FROM receipts WHERE id = 1)"
            " WHERE id = 1"
        )
        db.execute(
            "UPDATE receipts SET answer_sealed = (SELECT answer_sealed FROM receipts WHERE id = 1)"
            " WHERE id = 2"
        )
    db.close()
    with ReceiptStore.open(path, passphrase="pw") as store:
        for receipt in (first, second):
            with pytest.raises(HistoryLocked):
                store.history(receipt.request_digest)


def test_history_with_key_file(tmp_path: Path) -> None:
    path, key = tmp_path / "receipts.sqlite", tmp_path / "keys" / "history.key"
    receipt = receipt_for()
    with ReceiptStore.open(path, key_file=key) as store:
        store.add(receipt, prompt=PROMPT)
    assert os.stat(key).st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    with ReceiptStore.open(path, key_file=key) as store:
        assert store.history(receipt.request_digest) == (PROMPT, None)
    with pytest.raises(HistoryLocked, match="locked with"):
        ReceiptStore.open(path, passphrase="pw", scrypt_n=FAST)
    other = tmp_path / "other.key"
    with pytest.raises(HistoryLocked):
        ReceiptStore.open(path, key_file=other)  # a fresh key does not open this store
    key.chmod(0o644)
    with pytest.raises(HistoryLocked, match="0644"):
        ReceiptStore.open(path, key_file=key)
    with pytest.raises(HistoryLocked):
        ReceiptStore.open(path, key_file=tmp_path)  # a directory


def test_duplicate_receipt_is_refused(tmp_path: Path) -> None:
    with ReceiptStore.open(tmp_path / "r.sqlite") as store:
        store.add(receipt_for())
        with pytest.raises(ReceiptStoreError, match="already stored"):
            store.add(receipt_for())
    history = ReceiptStore.open(tmp_path / "h.sqlite", passphrase="pw", scrypt_n=FAST)
    with history, pytest.raises(ReceiptStoreError, match="no receipt"):
        history.history(b"\x00" * 32)


def test_receipts_by_node_newest_first(tmp_path: Path) -> None:
    other = NodeIdentity.generate()
    with ReceiptStore.open(tmp_path / "r.sqlite") as store:
        store.add(receipt_for(b"1"))
        store.add(receipt_for(b"2", node=other))
        store.add(receipt_for(b"3"))
        mine = store.receipts(node=NODE.address)
        assert [s.receipt.request_digest for s in mine] == [
            request_digest(b"3"),
            request_digest(b"1"),
        ]
        assert len(store.receipts()) == 3


def test_not_a_store_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ReceiptStoreError):
        ReceiptStore.open(path)


def test_default_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_receipts_path() == tmp_path / "veil" / "receipts.sqlite"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_receipts_path() == Path.home() / ".local/share/veil/receipts.sqlite"
