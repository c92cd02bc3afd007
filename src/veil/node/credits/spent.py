"""The durable spent-token set, one append-only file per epoch.

A token is spent once its 32-byte id (sha256 of its authenticator input) is fsynced to
`spent-<epoch>.bin`; only then does the node serve the request it paid. A crash can cut off
at most the last, un-fsynced append, whose request was never served, so no spent token ever
becomes valid again. A partial trailing record is ignored at load. Files of epochs whose
keys are gone are deleted with them (`prune`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path

from veil.durable import append_private

__all__ = ["AlreadySpent", "SpentSet"]

_RECORD = 32
_FILE = re.compile(r"spent-(\d{1,12})\.bin")


class AlreadySpent(Exception):
    """One of the tokens was spent before (or appears twice in one payment)."""


class SpentSet:
    """Spent token ids per epoch; `spend` records a whole payment or none of it."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._spent: dict[int, set[bytes]] = {}
        if directory is not None and directory.is_dir():
            for path in directory.iterdir():
                match = _FILE.fullmatch(path.name)
                if match:
                    data = path.read_bytes()
                    whole = len(data) - len(data) % _RECORD
                    self._spent[int(match.group(1))] = {
                        data[i : i + _RECORD] for i in range(0, whole, _RECORD)
                    }

    def spend(self, epoch: int, token_ids: Sequence[bytes]) -> None:
        """Mark `token_ids` spent (durably) or raise `AlreadySpent` and mark none."""
        if any(len(t) != _RECORD for t in token_ids):
            raise ValueError("token ids are 32 bytes")
        with self._lock:
            spent = self._spent.setdefault(epoch, set())
            if len(set(token_ids)) != len(token_ids) or spent.intersection(token_ids):
                raise AlreadySpent("token already spent")
            if self.directory is not None:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                append_private(self.directory / f"spent-{epoch}.bin", b"".join(token_ids))
            spent.update(token_ids)

    def is_spent(self, epoch: int, token_id: bytes) -> bool:
        with self._lock:
            return token_id in self._spent.get(epoch, ())

    def count(self, epoch: int) -> int:
        with self._lock:
            return len(self._spent.get(epoch, ()))

    def prune(self, keep_epochs: Sequence[int]) -> None:
        """Forget the epochs not in `keep_epochs` (their keys are gone: tokens refused anyway)."""
        with self._lock:
            for epoch in [e for e in self._spent if e not in keep_epochs]:
                del self._spent[epoch]
                if self.directory is not None:
                    (self.directory / f"spent-{epoch}.bin").unlink(missing_ok=True)
