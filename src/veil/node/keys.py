"""The node's OHTTP key pairs, and where it keeps them between runs."""

from __future__ import annotations

import json
import logging
import secrets
import stat
import time
from pathlib import Path

from veil.durable import write_private
from veil.node.errors import NodeSetupError
from veil.wire.ohttp import KeyConfig, KeyPair, encode_key_configs

__all__ = ["NodeKeys", "load_or_create_keys"]

log = logging.getLogger(__name__)


class NodeKeys:
    """The node's current and previous OHTTP key pairs, with when each was made.

    Rotation makes a new current key (next key id, modulo 256) and keeps the old one as
    previous, so requests sealed to the key a client fetched just before still open. Creation
    times (unix seconds) are kept, and saved, so rotation follows a key's age rather than how
    long the process has run (`veil.node.rotation.age_keys`).
    """

    def __init__(
        self,
        current: KeyPair,
        previous: KeyPair | None = None,
        *,
        created_at: float | None = None,
        previous_created_at: float | None = None,
    ) -> None:
        if previous is not None and previous.key_id == current.key_id:
            raise ValueError("current and previous keys need distinct key ids")
        now = time.time()
        self.current = current
        self.current_created_at = now if created_at is None else created_at
        self.previous = previous
        self.previous_created_at: float | None = None
        if previous is not None:
            self.previous_created_at = now if previous_created_at is None else previous_created_at

    @classmethod
    def generate(cls, key_id: int = 0, *, now: float | None = None) -> NodeKeys:
        return cls(KeyPair.generate(key_id), created_at=now)

    def rotate(self, now: float | None = None) -> KeyPair:
        """Make a fresh current key; the current one becomes previous, the previous is dropped."""
        fresh = KeyPair.generate((self.current.key_id + 1) % 256)
        self.previous, self.previous_created_at = self.current, self.current_created_at
        self.current, self.current_created_at = fresh, time.time() if now is None else now
        return fresh

    def drop_previous(self) -> None:
        """Forget the previous key: requests sealed to it no longer open."""
        self.previous = self.previous_created_at = None

    def get(self, key_id: int, /) -> KeyPair | None:
        for key in (self.current, self.previous):
            if key is not None and key.key_id == key_id:
                return key
        return None

    def configs(self) -> tuple[KeyConfig, ...]:
        keys = [self.current] + ([self.previous] if self.previous else [])
        return tuple(k.config for k in keys)

    def encoded_configs(self) -> bytes:
        """The `application/ohttp-keys` body."""
        return encode_key_configs(self.configs())

    def save(self, path: Path) -> None:
        """Write both secrets and their creation times to `path`, owner-only, durably."""
        entries = [(self.current, self.current_created_at)]
        if self.previous is not None:
            entries.append((self.previous, self.previous_created_at or 0.0))
        data = {
            "keys": [
                {"key_id": k.key_id, "secret": k.secret.hex(), "created_at": round(at, 3)}
                for k, at in entries
            ]
        }
        write_private(Path(path), json.dumps(data).encode())  # never a half-written key file

    @classmethod
    def load(cls, path: Path) -> NodeKeys:
        """Read a key file; a key saved without `created_at` (older files) counts as old."""
        entries = json.loads(Path(path).read_text())["keys"]
        pairs = [
            (KeyPair(int(e["key_id"]), bytes.fromhex(e["secret"])), float(e.get("created_at", 0)))
            for e in entries
        ]
        (current, created_at), previous = pairs[0], pairs[1] if len(pairs) > 1 else None
        if previous is None:
            return cls(current, created_at=created_at)
        return cls(current, previous[0], created_at=created_at, previous_created_at=previous[1])


def load_or_create_keys(path: Path | None) -> NodeKeys:
    """Load the key file (refused if others can read it), or create it 0600; None: memory only.

    A new key starts at a random key id: a client still holding a key config of an earlier
    run (same id, other key) would get a decryption failure, where a different id gets the
    RFC 9458 key error that makes it refetch the key list.
    """
    if path is None:
        return NodeKeys.generate(secrets.randbelow(256))
    if path.exists():
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise NodeSetupError(f"{path} is accessible to other users; chmod 600 it")
        try:
            return NodeKeys.load(path)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise NodeSetupError(f"cannot read OHTTP keys from {path}: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = NodeKeys.generate(secrets.randbelow(256))
    keys.save(path)
    log.info("created OHTTP keys in %s", path)
    return keys
