"""The node's OHTTP key pairs, and where it keeps them between runs."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

from veil.node.errors import NodeSetupError
from veil.wire.ohttp import KeyConfig, KeyPair, encode_key_configs

__all__ = ["NodeKeys", "load_or_create_keys"]

log = logging.getLogger(__name__)


class NodeKeys:
    """The node's current and previous OHTTP key pairs.

    Rotation makes a new current key (next key id, modulo 256) and keeps the old one as
    previous, so requests sealed to the key a client fetched just before still open.
    """

    def __init__(self, current: KeyPair, previous: KeyPair | None = None) -> None:
        if previous is not None and previous.key_id == current.key_id:
            raise ValueError("current and previous keys need distinct key ids")
        self.current = current
        self.previous = previous

    @classmethod
    def generate(cls, key_id: int = 0) -> NodeKeys:
        return cls(KeyPair.generate(key_id))

    def rotate(self) -> KeyPair:
        """Make a fresh current key; the current one becomes previous, the previous is dropped."""
        fresh = KeyPair.generate((self.current.key_id + 1) % 256)
        self.previous, self.current = self.current, fresh
        return fresh

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
        """Write both secrets to `path`, readable by the owner only."""
        data = {
            "keys": [
                {"key_id": k.key_id, "secret": k.secret.hex()}
                for k in (self.current, self.previous)
                if k is not None
            ]
        }
        tmp = Path(f"{path}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)  # never a half-written key file

    @classmethod
    def load(cls, path: Path) -> NodeKeys:
        entries = json.loads(Path(path).read_text())["keys"]
        pairs = [KeyPair(int(e["key_id"]), bytes.fromhex(e["secret"])) for e in entries]
        return cls(pairs[0], pairs[1] if len(pairs) > 1 else None)


def load_or_create_keys(path: Path | None) -> NodeKeys:
    """Load the key file (refused if others can read it), or create it 0600; None: memory only."""
    if path is None:
        return NodeKeys.generate()
    if path.exists():
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise NodeSetupError(f"{path} is accessible to other users; chmod 600 it")
        try:
            return NodeKeys.load(path)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise NodeSetupError(f"cannot read OHTTP keys from {path}: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = NodeKeys.generate()
    keys.save(path)
    log.info("created OHTTP keys in %s", path)
    return keys
