"""The OHTTP gateway's replay memory, and its durable form that survives restarts.

The gateway remembers (key id, encapsulated key) of every request it opened. `ReplayCache`
keeps them in memory: enough while keys live in memory too, since a restart then makes new
keys and nothing sealed before it opens. A node whose keys persist (`--keys`) uses
`ReplayLog`, which also appends each entry to a file and fsyncs it before the request is
served, so a request captured before a restart (or a crash) is still refused after it.

Why a log rather than retiring the keys at start-up: clients keep working across restarts
(no key error, key list refetch and descriptor re-verification for every client after each
restart), and key age stays meaningful, so rotation follows it. The price is one fsync per
opened request, shared by the requests that arrive together (group commit), off the event
loop. Only the node's operator can remove the log, and the operator holds the keys anyway.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from veil.durable import append_private, write_private
from veil.node.errors import NodeSetupError

__all__ = ["ReplayCache", "ReplayLog", "replay_log_path"]

log = logging.getLogger(__name__)


class ReplayCache:
    """Remembers values for `window_s` seconds, at most `capacity` of them (oldest dropped)."""

    def __init__(
        self, window_s: float, capacity: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window, self._capacity, self._clock = window_s, capacity, clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def _forget_expired(self, now: float) -> None:
        while self._seen:
            oldest, seen_at = next(iter(self._seen.items()))
            if now - seen_at < self._window:
                break
            del self._seen[oldest]

    def check_and_add(self, value: bytes) -> bool:
        """True if `value` is new (and now remembered); False for a replay inside the window."""
        now = self._clock()
        self._forget_expired(now)
        if value in self._seen:
            return False
        self._seen[value] = now
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True

    async def commit(self, value: bytes) -> None:
        """Make an added value durable before its request is served; memory only: nothing."""


def replay_log_path(keys_path: str | os.PathLike[str]) -> Path:
    """Where a node keeps the replay log of the keys in `keys_path`: beside them."""
    path = Path(keys_path)
    return path.with_name(path.name + ".replay")


class ReplayLog(ReplayCache):
    """A `ReplayCache` (wall clock) also kept in `path`: one `<unix time> <hex>` line per entry.

    `commit` appends and fsyncs; concurrent commits share one write and one fsync. At open,
    entries older than the window are dropped and the newest `capacity` kept; the file is
    rewritten (atomically, 0600) then and whenever it holds more than twice the live entries
    (plus `slack` lines), so it stays bounded. A torn or invalid line is skipped. Entries
    reveal traffic volume and timing: the file is created 0600.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        window_s: float,
        capacity: int,
        clock: Callable[[], float] = time.time,
        *,
        slack: int = 1024,
    ) -> None:
        super().__init__(window_s, capacity, clock)
        self.path = Path(path)
        self._slack = slack
        self._lines = 0  # lines in the file now
        self._waiting: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._load()
        try:
            self._rewrite(list(self._seen.items()))
        except OSError as exc:
            raise NodeSetupError(f"cannot write the replay log {self.path}: {exc}") from exc

    def _load(self) -> None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as exc:
            raise NodeSetupError(f"cannot read the replay log {self.path}: {exc}") from exc
        now, skipped = self._clock(), 0
        entries: list[tuple[float, bytes]] = []
        for line in text.splitlines():
            try:
                stamp, hexed = line.split(" ")
                entries.append((float(stamp), bytes.fromhex(hexed)))
            except ValueError:
                skipped += 1
        if skipped:
            log.warning("replay log %s: %d invalid or torn lines skipped", self.path, skipped)
        entries.sort()
        for at, value in entries[-self._capacity :]:
            if now - at < self._window:
                self._seen.pop(value, None)
                self._seen[value] = at
        log.info("replay log %s: %d requests remembered", self.path, len(self._seen))

    def _rewrite(self, entries: list[tuple[bytes, float]]) -> None:
        """Replace the file with `entries` (atomic, durable, 0600)."""
        write_private(self.path, b"".join(_line(value, at) for value, at in entries))
        self._lines = len(entries)

    def _append(self, data: bytes, count: int) -> None:
        append_private(self.path, data)
        self._lines += count

    async def commit(self, value: bytes) -> None:
        """Return once `value` is on disk; raises OSError if it cannot be written."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((_line(value, self._seen.get(value, self._clock())), future))
        flusher = self._flusher
        if flusher is None or flusher.done() or flusher.get_loop() is not future.get_loop():
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        """Write what is waiting, one batch per write, until nothing is; compact when due."""
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await asyncio.to_thread(
                    self._append, b"".join(line for line, _ in batch), len(batch)
                )
            except OSError as exc:
                log.error("cannot write the replay log %s: %s", self.path, exc)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(OSError(exc.errno, exc.strerror))
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
            if self._lines > 2 * len(self._seen) + self._slack:
                self._forget_expired(self._clock())
                try:
                    await asyncio.to_thread(self._rewrite, list(self._seen.items()))
                except OSError as exc:  # the log is still correct, only longer
                    log.warning("cannot compact the replay log %s: %s", self.path, exc)


def _line(value: bytes, at: float) -> bytes:
    return f"{at:.3f} {value.hex()}\n".encode()
