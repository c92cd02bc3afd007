"""The client's token wallet: bought tokens per node, in a journal that survives a kill.

Journal: one JSON object per line, each appended and fsynced (0600) before the call returns:

    {"op": "add", "node": "0x..", "not_after": 1700000000, "token": "<base64url>"}
    {"op": "take", "id": "<hex>"}     handed to a request, before it is sent
    {"op": "spent", "id": "<hex>"}    the node took it (answered, or said it was spent)
    {"op": "return", "id": "<hex>"}   the request never reached the node: usable again

Why this is safe at any kill point: a line is either whole or, at the end of the file, cut and
ignored. A token added is never lost (its `add` is written before `add` returns, and the
purchase's blinded signatures are turned into tokens before anything else happens). A token is
never handed to two requests at once (`take` is durable before the token leaves the wallet);
a token taken by a process that died is "in doubt": it goes back to the end of the queue and is
offered once more, where the node either accepts it (it was never spent) or refuses it with
`token_spent` (then it is dropped). The node's spent set, not the wallet, is what stops a
second payment with one token; the wallet only makes sure none is wasted.

Compaction: once the journal holds many more lines than live tokens (at open, and after a
settle), it is rewritten with only the live ones (an `add` each, plus a `take` for each token
in doubt or handed out), into a temporary file that is fsynced and renamed over the journal,
then the directory is fsynced: a kill leaves either the old journal or the new one, whole.
Expired tokens are dropped then.

One process owns a journal: it holds an exclusive lock (`flock` on `<journal>.lock`) for the
wallet's lifetime, so a second gateway on the same wallet fails at start instead of handing
out tokens the first one holds. `readonly=True` (what `veil status` uses) takes no lock and
never writes or compacts.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from veil.client.errors import ClientError
from veil.durable import append_private, write_private
from veil.identity.credits.token import Token

__all__ = ["TOKEN_WALLET_FILE", "TokenWallet", "TokenWalletBusy", "WalletToken"]

_MAX_LINE = 4096
# The journal's name beside the wallet keystore (`veil gateway --wallet`, `veil status`).
TOKEN_WALLET_FILE = "tokens.jsonl"


@dataclass(frozen=True)
class WalletToken:
    """One token held for one node, with when its epoch's key stops being accepted."""

    node: str
    token: Token
    not_after: int  # unix seconds: after this (plus the node's grace) the node refuses it

    @property
    def id(self) -> str:
        return hashlib.sha256(self.token.encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_COMPACT_SLACK = 1024  # journal lines beyond four per live token before a compaction


class TokenWalletBusy(ClientError):
    """Another process owns this token wallet (or it was opened read-only)."""


def _own(path: Path) -> int:
    """An exclusive lock on `path`'s lock file, or `TokenWalletBusy`."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise TokenWalletBusy(
            f"another process (a second gateway?) uses the token wallet {path}"
        ) from None
    return fd


def _add_record(held: WalletToken) -> dict[str, object]:
    return {
        "op": "add",
        "node": held.node,
        "not_after": held.not_after,
        "token": _b64(held.token.encode()),
    }


def _lines(records: Sequence[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)


class TokenWallet:
    """Tokens per node (oldest first); `path` None keeps them in memory (lost at exit)."""

    def __init__(
        self,
        path: Path | None,
        *,
        clock: Callable[[], float] = time.time,
        readonly: bool = False,
    ) -> None:
        self.path = path
        self.readonly = readonly
        self._clock = clock
        self._lock = threading.Lock()
        self._owner: int | None = None  # the lock file's descriptor, held while open
        if path is not None and not readonly:
            self._owner = _own(path)
        self._free: OrderedDict[str, WalletToken] = OrderedDict()  # id -> token, usable
        self._taken: dict[str, WalletToken] = {}
        self.in_doubt = 0  # taken by a process that ended before it knew the outcome
        self._doubt: set[str] = set()  # ids in doubt: written as taken again on compaction
        self.lines = 0  # journal lines, to know when to compact
        if path is not None and path.exists():
            self._replay(path.read_bytes())
            with self._lock:
                self._maybe_compact()

    def close(self) -> None:
        """Let another process own the journal (the lock is released)."""
        if self._owner is not None:
            os.close(self._owner)
            self._owner = None

    def _replay(self, data: bytes) -> None:
        tokens: dict[str, WalletToken] = {}
        state: dict[str, str] = {}
        for line in data.split(b"\n"):
            if not line or len(line) > _MAX_LINE:
                continue
            self.lines += 1
            try:
                rec = json.loads(line)
                if rec["op"] == "add":
                    held = WalletToken(
                        str(rec["node"]), Token.decode(_unb64(rec["token"])), int(rec["not_after"])
                    )
                    tokens[held.id] = held
                    state.setdefault(held.id, "free")
                elif rec["op"] in ("take", "spent", "return") and rec["id"] in tokens:
                    state[rec["id"]] = {"take": "taken", "spent": "spent", "return": "free"}[
                        rec["op"]
                    ]
            except (ValueError, KeyError, TypeError):
                continue  # a line a kill cut short (only ever the last one)
        doubt = []
        for token_id, held in tokens.items():
            if state[token_id] == "free":
                self._free[token_id] = held
            elif state[token_id] == "taken":
                doubt.append(held)
        for held in doubt:  # offered again, after the certainly unspent ones
            self._free[held.id] = held
        self.in_doubt = len(doubt)
        self._doubt = {h.id for h in doubt}

    def _maybe_compact(self) -> None:
        """Rewrite the journal with the live tokens alone when it has grown (lock held)."""
        live = len(self._free) + len(self._taken)
        if self.path is None or self.readonly or self.lines <= 4 * live + _COMPACT_SLACK:
            return
        now = self._clock()
        records: list[dict[str, object]] = []
        for held in [*self._free.values(), *self._taken.values()]:
            if held.not_after <= now:
                continue
            records.append(_add_record(held))
            if held.id in self._taken or held.id in self._doubt:
                records.append({"op": "take", "id": held.id})
        write_private(self.path, _lines(records))
        self._free = OrderedDict((k, h) for k, h in self._free.items() if h.not_after > now)
        self.lines = len(records)

    def _write(self, records: Sequence[dict[str, object]]) -> None:
        if self.path is None:
            return
        if self.readonly:
            raise TokenWalletBusy("this token wallet was opened read-only")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        append_private(self.path, _lines(records))
        self.lines += len(records)

    def add(self, node: str, tokens: Sequence[Token], not_after: int) -> None:
        """Keep newly bought tokens (durable before this returns)."""
        held = [WalletToken(node.lower(), t, not_after) for t in tokens]
        with self._lock:
            self._write([_add_record(h) for h in held])
            for h in held:
                self._free[h.id] = h

    def take(self, node: str, count: int) -> list[WalletToken] | None:
        """`count` usable tokens for `node` (oldest first), marked taken; None if too few."""
        now = self._clock()
        with self._lock:
            usable = [
                h for h in self._free.values() if h.node == node.lower() and h.not_after > now
            ]
            if len(usable) < count:
                return None
            chosen = usable[:count]
            self._write([{"op": "take", "id": h.id} for h in chosen])
            for h in chosen:
                del self._free[h.id]
                self._taken[h.id] = h
            return chosen

    def settle(self, tokens: Sequence[WalletToken], *, spent: bool) -> None:
        """The outcome of a request paid with `tokens`: spent, or returned for another try."""
        with self._lock:
            self._write([{"op": "spent" if spent else "return", "id": h.id} for h in tokens])
            for h in tokens:
                self._taken.pop(h.id, None)
                self._doubt.discard(h.id)
                if not spent:
                    self._free[h.id] = h
            self._maybe_compact()

    def balance(self) -> dict[str, int]:
        """Usable tokens per node (not expired, not taken)."""
        now = self._clock()
        with self._lock:
            counts: dict[str, int] = {}
            for h in self._free.values():
                if h.not_after > now:
                    counts[h.node] = counts.get(h.node, 0) + 1
            return counts
