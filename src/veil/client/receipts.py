"""Receipts on the client: verify each answer's receipt, and keep receipts in a local store.

`verify_receipt(receipt, expected_signer, request_digest, answer_text, model_hash)` (from
`veil.identity.receipt`) refuses a receipt from another node, for another request or answer,
or with any field changed; a client that requires receipts shows no answer whose receipt fails.

`ReceiptStore` keeps receipts in SQLite (default `$XDG_DATA_HOME/veil/receipts.sqlite`, i.e.
`~/.local/share/veil/receipts.sqlite`; file 0600, directory 0700). Prompts and answers are
stored only when history is on, that is when the store is opened with a passphrase or a key
file, and then only encrypted: AES-256-GCM with a random nonce per field, the row's request
digest and the field name as associated data (so ciphertexts cannot be swapped between rows or
fields). The key comes from the passphrase through scrypt (salt and cost kept in the store), or
is 32 random bytes in a key file that must be 0600. A check value in the store makes a wrong
passphrase or key file fail with `HistoryLocked` instead of returning garbage.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veil.client.errors import HistoryLocked, ReceiptStoreError
from veil.identity.receipt import Receipt, check_receipt, verify_receipt

__all__ = [
    "DEFAULT_SCRYPT_N",
    "HistoryKey",
    "ReceiptStore",
    "StoredReceipt",
    "check_receipt",
    "default_receipts_path",
    "verify_receipt",
]

DEFAULT_SCRYPT_N = 2**15  # about 32 MiB and a tenth of a second per unlock
_CHECK_PLAINTEXT = b"veil history v1"
_NONCE = 12


def default_receipts_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "veil" / "receipts.sqlite"


class HistoryKey:
    """The 32-byte key that encrypts stored prompts and answers."""

    def __init__(self, key: bytes, *, kdf: str) -> None:
        if len(key) != 32:
            raise ValueError("history key must be 32 bytes")
        self._aead = AESGCM(key)
        self.kdf = kdf  # "scrypt" or "keyfile": a store opened one way refuses the other

    @classmethod
    def from_passphrase(cls, passphrase: str, salt: bytes, *, n: int) -> HistoryKey:
        if not passphrase:
            raise ValueError("empty passphrase")
        key = hashlib.scrypt(
            passphrase.encode("utf-8"), salt=salt, n=n, r=8, p=1, maxmem=256 * 1024 * 1024, dklen=32
        )
        return cls(key, kdf="scrypt")

    @classmethod
    def from_key_file(cls, path: Path, *, create: bool = False) -> HistoryKey:
        """The key in `path` (0600, exactly 32 bytes); made there first when `create`."""
        path = Path(path)
        if create and not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(32))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as err:
            raise HistoryLocked(f"cannot open history key file {path}: {err.strerror}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            os.close(fd)
            raise HistoryLocked(
                f"history key file {path} has mode {stat.S_IMODE(info.st_mode):04o}, another "
                "owner, or is not a file; it must be your own regular file, mode 0600"
            )
        with os.fdopen(fd, "rb") as f:
            key = f.read(33)
        if len(key) != 32:
            raise HistoryLocked(f"history key file {path} does not hold 32 bytes")
        return cls(key, kdf="keyfile")

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], aad)
        except (InvalidTag, ValueError):
            raise HistoryLocked("stored history does not open with this key") from None


@dataclass(frozen=True)
class StoredReceipt:
    receipt: Receipt
    model_id: str
    stored_at: int
    has_history: bool  # an encrypted prompt/answer is stored with it


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS receipts (
    id INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    request_digest BLOB NOT NULL UNIQUE,
    model_id TEXT NOT NULL,
    receipt_json BLOB NOT NULL,
    stored_at INTEGER NOT NULL,
    prompt_sealed BLOB,
    answer_sealed BLOB
);
CREATE INDEX IF NOT EXISTS receipts_node ON receipts (node);
"""


def _create_private(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))


class ReceiptStore:
    """A local SQLite store of verified receipts, with optional encrypted history."""

    def __init__(self, connection: sqlite3.Connection, history: HistoryKey | None) -> None:
        self._db = connection
        self._history = history

    @classmethod
    def open(
        cls,
        path: Path | None = None,
        *,
        passphrase: str | None = None,
        key_file: Path | None = None,
        scrypt_n: int = DEFAULT_SCRYPT_N,
    ) -> ReceiptStore:
        """Open (or create) the store; history is on iff a passphrase or a key file is given."""
        if passphrase is not None and key_file is not None:
            raise ValueError("give a passphrase or a key file, not both")
        path = default_receipts_path() if path is None else Path(path)
        try:
            _create_private(path)
            db = sqlite3.connect(path)
            db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise ReceiptStoreError(f"cannot open receipt store {path}: {err}") from None
        history = None
        try:
            if passphrase is not None:
                history = cls._passphrase_key(db, passphrase, scrypt_n)
            elif key_file is not None:
                history = HistoryKey.from_key_file(key_file, create=True)
            if history is not None:
                cls._check_key(db, history)
        except BaseException:
            db.close()
            raise
        return cls(db, history)

    @staticmethod
    def _meta(db: sqlite3.Connection, name: str) -> bytes | None:
        row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    @classmethod
    def _passphrase_key(cls, db: sqlite3.Connection, passphrase: str, n: int) -> HistoryKey:
        salt = cls._meta(db, "scrypt_salt")
        stored_n = cls._meta(db, "scrypt_n")
        if salt is None:
            salt = secrets.token_bytes(16)
            with db:
                db.execute("INSERT INTO meta VALUES ('scrypt_salt', ?)", (salt,))
                db.execute("INSERT INTO meta VALUES ('scrypt_n', ?)", (str(n).encode(),))
        else:
            n = int(stored_n or b"0")
        return HistoryKey.from_passphrase(passphrase, salt, n=n)

    @classmethod
    def _check_key(cls, db: sqlite3.Connection, key: HistoryKey) -> None:
        kdf = cls._meta(db, "history_kdf")
        check = cls._meta(db, "history_check")
        if check is None:
            with db:
                db.execute("INSERT INTO meta VALUES ('history_kdf', ?)", (key.kdf.encode(),))
                db.execute(
                    "INSERT INTO meta VALUES ('history_check', ?)",
                    (key.seal(_CHECK_PLAINTEXT, b"check"),),
                )
            return
        if kdf != key.kdf.encode():
            raise HistoryLocked(f"this store's history is locked with a {kdf!r}, not a {key.kdf}")
        if key.open(check, b"check") != _CHECK_PLAINTEXT:
            raise HistoryLocked("stored history does not open with this key")

    @property
    def history_enabled(self) -> bool:
        return self._history is not None

    def add(
        self,
        receipt: Receipt,
        *,
        model_id: str = "",
        prompt: str | None = None,
        answer: str | None = None,
    ) -> None:
        """Store a receipt the client verified. Prompt and answer are kept only with history on
        (encrypted); otherwise they are dropped here, never written."""
        prompt_sealed = answer_sealed = None
        if self._history is not None:
            aad = receipt.request_digest
            if prompt is not None:
                prompt_sealed = self._history.seal(prompt.encode("utf-8"), aad + b"|prompt")
            if answer is not None:
                answer_sealed = self._history.seal(answer.encode("utf-8"), aad + b"|answer")
        try:
            with self._db:
                self._db.execute(
                    "INSERT INTO receipts (node, request_digest, model_id, receipt_json,"
                    " stored_at, prompt_sealed, answer_sealed) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        receipt.node,
                        receipt.request_digest,
                        model_id,
                        receipt.encode(),
                        int(time.time()),
                        prompt_sealed,
                        answer_sealed,
                    ),
                )
        except sqlite3.IntegrityError:
            raise ReceiptStoreError("a receipt for this request is already stored") from None
        except sqlite3.Error as err:
            raise ReceiptStoreError(f"cannot store the receipt: {err}") from None

    def receipts(self, *, node: str | None = None, limit: int = 1000) -> list[StoredReceipt]:
        """Stored receipts, newest first (optionally of one node)."""
        query = (
            "SELECT receipt_json, model_id, stored_at, prompt_sealed IS NOT NULL"
            " OR answer_sealed IS NOT NULL FROM receipts"
        )
        args: tuple[object, ...] = ()
        if node is not None:
            query += " WHERE node = ?"
            args = (node,)
        rows = self._db.execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [StoredReceipt(Receipt.from_json(bytes(r[0])), r[1], r[2], bool(r[3])) for r in rows]

    def history(self, request_digest: bytes) -> tuple[str | None, str | None]:
        """The decrypted (prompt, answer) stored with a receipt; needs the history key."""
        if self._history is None:
            raise HistoryLocked("history is locked: open the store with its passphrase or key")
        row = self._db.execute(
            "SELECT prompt_sealed, answer_sealed FROM receipts WHERE request_digest = ?",
            (request_digest,),
        ).fetchone()
        if row is None:
            raise ReceiptStoreError("no receipt stored for this request")
        prompt = None if row[0] is None else self._history.open(row[0], request_digest + b"|prompt")
        answer = None if row[1] is None else self._history.open(row[1], request_digest + b"|answer")
        return (
            None if prompt is None else prompt.decode("utf-8"),
            None if answer is None else answer.decode("utf-8"),
        )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ReceiptStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
