"""`NodeIdentity`: the node's account, the one key that signs its descriptors and receipts.

Its address is the node's identity on chain. The private key stays inside this object; it is
never printed or returned, only used to sign.
"""

from __future__ import annotations

import logging
from pathlib import Path

from eth_account import Account
from eth_account.messages import SignableMessage, encode_defunct
from eth_account.signers.local import LocalAccount

from veil.identity.errors import KeystoreUnreadable
from veil.identity.keystore import DEFAULT_SCRYPT_N, load_keystore, save_keystore

__all__ = ["NodeIdentity"]

log = logging.getLogger(__name__)


class NodeIdentity:
    """A node's secp256k1 account, loaded from or persisted to its keystore."""

    def __init__(self, account: LocalAccount) -> None:
        self._account = account

    @classmethod
    def generate(cls) -> NodeIdentity:
        """A fresh random account (not saved)."""
        return cls(Account.create())

    @classmethod
    def load(cls, path: Path, passphrase: str | None = None) -> NodeIdentity:
        return cls(load_keystore(path, passphrase))

    @classmethod
    def load_or_create(
        cls, path: Path, passphrase: str | None = None, *, scrypt_n: int = DEFAULT_SCRYPT_N
    ) -> NodeIdentity:
        """The account in `path`, or a new one written there when the file does not exist.

        Any other problem with an existing file (permissions, passphrase, content) is raised:
        a node never silently replaces its identity.
        """
        try:
            return cls.load(path, passphrase)
        except KeystoreUnreadable as err:
            if err.check != "keystore.exists":
                raise
        identity = cls.generate()
        identity.save(path, passphrase, scrypt_n=scrypt_n)
        log.info("created node identity %s in %s", identity.address, path)
        return identity

    def save(
        self, path: Path, passphrase: str | None = None, *, scrypt_n: int = DEFAULT_SCRYPT_N
    ) -> None:
        save_keystore(self._account, path, passphrase, scrypt_n=scrypt_n)

    @property
    def address(self) -> str:
        """EIP-55 checksummed address."""
        return str(self._account.address)

    @property
    def private_key(self) -> bytes:
        """The raw key, for signing this account's own chain transactions (`ChainClient`)."""
        return bytes(self._account.key)

    def sign_digest(self, digest: bytes) -> bytes:
        """EIP-191 (personal_sign) signature over a 32-byte digest: 65 bytes r || s || v."""
        if len(digest) != 32:
            raise ValueError("sign_digest takes a 32-byte digest")
        return bytes(self._account.sign_message(encode_defunct(primitive=digest)).signature)

    def sign_typed(self, message: SignableMessage) -> bytes:
        """Signature over an EIP-712 message built with `encode_typed_data`."""
        return bytes(self._account.sign_message(message).signature)

    def __repr__(self) -> str:
        return f"NodeIdentity({self.address})"
