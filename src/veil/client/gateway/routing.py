"""Which verified node gets the next request: node health and the choice among candidates.

Discovery says which nodes may be used (verified under a mode's policy, matching the
registry); the `Router` says which of them to try first. It keeps, per operator, the requests
in flight, an EWMA of the time to the first byte, and a down-until time after a failure, so
failover skips a node that just failed instead of hammering it. The time down doubles with
each failure in a row (`down_s`, then twice that... up to `down_max_s`) and starts over once
the node answers: a node that keeps failing costs ever fewer requests a first attempt.

Only the node's own failures count (`mark_down`): a relay that refuses or breaks is not the
node's doing, and the gateway does not mark the node down for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

__all__ = ["Routable", "Router"]

log = logging.getLogger(__name__)


class Routable(Protocol):
    """Anything routed to by its operator address (`veil.client.discovery.Candidate`)."""

    @property
    def operator(self) -> str: ...


C = TypeVar("C", bound=Routable)


@dataclass
class _Health:
    in_flight: int = 0
    ttfb_s: float | None = None  # EWMA of time to first byte
    down_until: float = 0.0  # monotonic
    failures: int = 0  # failures in a row (the backoff's exponent); 0 once it answers


class Router:
    """Health per operator and the ranking it implies; thread-safe (discovery's worker
    threads ask `down_for`, the MPC path frees parties from its own threads)."""

    def __init__(
        self,
        *,
        down_s: float = 30.0,
        down_max_s: float = 600.0,
        ewma_alpha: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.down_s = down_s  # a node that failed a request is skipped this long at first
        self.down_max_s = down_max_s  # ...and at most this long, however often it failed
        self.ewma_alpha = ewma_alpha  # weight of the newest time-to-first-byte sample
        self._clock = clock
        self._lock = threading.Lock()
        self._health: dict[str, _Health] = {}

    def _of(self, operator: str) -> _Health:
        """The operator's record (call with the lock held)."""
        return self._health.setdefault(operator, _Health())

    # ------------------------------------------------------------------ choice

    def rank(self, candidates: Iterable[C], exclude: Iterable[str] = ()) -> list[C]:
        """The candidates not excluded nor down, best first: fewest requests in flight, then
        the lowest time to first byte (a node not measured yet counts as fastest, so it gets
        tried), then the order given."""
        skip = {op.lower() for op in exclude}
        now = self._clock()
        with self._lock:
            ranked = []
            for i, c in enumerate(candidates):
                h = self._of(c.operator)
                if c.operator.lower() in skip or h.down_until > now:
                    continue
                ranked.append((h.in_flight, h.ttfb_s or 0.0, i, c))
        return [r[3] for r in sorted(ranked, key=lambda r: r[:3])]

    def pick(self, candidates: Iterable[C], exclude: Iterable[str] = ()) -> C | None:
        """The best of `rank` (None if none)."""
        ranked = self.rank(candidates, exclude)
        return ranked[0] if ranked else None

    # ------------------------------------------------------------------ health

    def started(self, operator: str) -> None:
        """A request to the operator is in flight (until `finished`)."""
        with self._lock:
            self._of(operator).in_flight += 1

    def finished(self, operator: str) -> None:
        with self._lock:
            h = self._of(operator)
            h.in_flight = max(0, h.in_flight - 1)

    def record_ttfb(self, operator: str, seconds: float) -> None:
        with self._lock:
            h = self._of(operator)
            a = self.ewma_alpha
            h.ttfb_s = seconds if h.ttfb_s is None else a * seconds + (1 - a) * h.ttfb_s

    def mark_up(self, operator: str) -> None:
        """The operator answered a request in full: its backoff starts over."""
        with self._lock:
            self._of(operator).failures = 0

    def mark_down(self, operator: str, why: str) -> None:
        """Skip the operator: it failed a request (`why` goes to the log). `down_s` the first
        time, doubled for each failure in a row, `down_max_s` at most. Failures reported
        while it is already down (requests that were in flight when it failed) are the same
        outage: they do not double the span, so a node killed under load with 30 requests in
        flight is skipped `down_s`, not `down_max_s`."""
        with self._lock:
            h = self._of(operator)
            now = self._clock()
            if h.down_until > now:
                return
            h.failures += 1
            span = min(self.down_max_s, self.down_s * 2 ** min(h.failures - 1, 32))
            h.down_until = now + span
        log.warning("node %s marked down for %.0f s: %s", operator, span, why)

    def down_for(self, operator: str) -> float:
        """Seconds the operator is still skipped for (0: it is not down)."""
        now = self._clock()
        with self._lock:
            return max(0.0, self._of(operator).down_until - now)

    def health(self, operator: str) -> dict[str, float | None]:
        """The operator's health as `/veil/status` shows it."""
        now = self._clock()
        with self._lock:
            h = self._of(operator)
            in_flight, ttfb_s, down_until = h.in_flight, h.ttfb_s, h.down_until
        return {
            "in_flight": in_flight,
            "ttfb_ms": None if ttfb_s is None else round(ttfb_s * 1000, 1),
            "down_for_s": max(0.0, round(down_until - now, 1)),
            "down_until": int(time.time() + down_until - now) if down_until > now else None,
        }
