"""The node's per-epoch token keys (RFC 9578 issuer keys), kept 0600 and rotated by the clock.

Epoch e covers unix time [e * epoch_s, (e + 1) * epoch_s). The node issues under the current
epoch's key only; it accepts tokens of the current epoch and, for `grace_s` after an epoch
ends, of the previous one, so tokens bought just before a rotation stay spendable. Keys of
older epochs are deleted: their tokens are then refused as of an unknown epoch.

Files: `token-key-<epoch>.pem` (PKCS#8, unencrypted, 0600 via `veil.durable`) in the
credits directory; None keeps keys in memory (they die with the process, as do their tokens).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from veil.durable import write_private
from veil.identity.credits.blindrsa import BlindSigner
from veil.identity.credits.token import encode_public_key, token_key_id

__all__ = ["EpochKey", "TokenKeyring"]

_KEY_FILE = re.compile(r"token-key-(\d{1,12})\.pem")


@dataclass(frozen=True)
class EpochKey:
    """One epoch's issuer key: what the node signs with and what it commits to."""

    epoch: int
    signer: BlindSigner
    public_key: bytes  # RFC 9578 encoding (RSASSA-PSS SPKI)
    key_id: bytes  # sha256(public_key): what a token names
    not_before: int  # unix seconds: the epoch's start
    not_after: int  # unix seconds: the epoch's end (tokens accepted until + grace)

    def commitment(self) -> dict[str, object]:
        """The public facts a client checks a key against (descriptor / chain)."""
        return {
            "epoch": self.epoch,
            "public_key": self.public_key.hex(),
            "key_id": self.key_id.hex(),
            "not_before": self.not_before,
            "not_after": self.not_after,
        }


class TokenKeyring:
    """Current and grace-window token keys, created on demand and stored under `directory`."""

    def __init__(
        self,
        directory: Path | None,
        *,
        epoch_s: int = 86_400,
        grace_s: int = 3_600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if epoch_s <= 0 or not 0 <= grace_s <= epoch_s:
            raise ValueError("epoch_s must be positive and grace_s within [0, epoch_s]")
        self.directory, self.epoch_s, self.grace_s = directory, epoch_s, grace_s
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[int, EpochKey] = {}
        if directory is not None and directory.is_dir():
            for path in directory.iterdir():
                match = _KEY_FILE.fullmatch(path.name)
                if match:
                    self._keys[int(match.group(1))] = self._load(int(match.group(1)), path)

    def epoch_at(self, now: float) -> int:
        return int(now // self.epoch_s)

    def _entry(self, epoch: int, key: rsa.RSAPrivateKey) -> EpochKey:
        public = encode_public_key(key.public_key())
        start = epoch * self.epoch_s
        return EpochKey(
            epoch, BlindSigner(key), public, token_key_id(public), start, start + self.epoch_s
        )

    def _load(self, epoch: int, path: Path) -> EpochKey:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path.name} is not an RSA key")
        return self._entry(epoch, key)

    def _create(self, epoch: int) -> EpochKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if self.directory is not None:
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_private(self.directory / f"token-key-{epoch}.pem", pem)
        return self._entry(epoch, key)

    def _retire_old(self, now: float) -> None:
        for epoch in [e for e in self._keys if not self._acceptable(e, now)]:
            if epoch < self.epoch_at(now):
                del self._keys[epoch]
                if self.directory is not None:
                    (self.directory / f"token-key-{epoch}.pem").unlink(missing_ok=True)

    def _acceptable(self, epoch: int, now: float) -> bool:
        current = self.epoch_at(now)
        if epoch == current:
            return True
        return epoch == current - 1 and now < (epoch + 1) * self.epoch_s + self.grace_s

    def current(self) -> EpochKey:
        """The key to issue under now (created and stored at the first use in its epoch)."""
        now = self._clock()
        with self._lock:
            self._retire_old(now)
            epoch = self.epoch_at(now)
            if epoch not in self._keys:
                self._keys[epoch] = self._create(epoch)
            return self._keys[epoch]

    def accepting(self) -> list[EpochKey]:
        """The keys whose tokens are spendable now: the current one and one in its grace."""
        now = self._clock()
        self.current()
        with self._lock:
            return sorted(
                (k for e, k in self._keys.items() if self._acceptable(e, now)),
                key=lambda k: k.epoch,
                reverse=True,
            )

    def for_key_id(self, key_id: bytes) -> EpochKey | None:
        """The accepted key a token names, or None (unknown, expired or future epoch)."""
        for key in self.accepting():
            if key.key_id == key_id:
                return key
        return None
