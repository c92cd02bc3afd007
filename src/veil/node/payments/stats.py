"""Payment counters since the node started, shared by the desk and the redeemer (`/healthz`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

__all__ = ["PaymentStats"]


@dataclass
class PaymentStats:
    """Counters since the node started (pending comes from the queue)."""

    accepted: int = 0  # tickets accepted (winning or not)
    winners: int = 0  # accepted tickets that won, queued for redemption
    unpaid: int = 0  # requests served without a ticket (free node)
    refused: int = 0  # requests refused with a payment error
    redeemed: int = 0  # winners settled on chain (including ones found already redeemed)
    failed: int = 0  # winners the broker refused for good (dropped)
    requeued: int = 0  # redeemed winners the chain turned out not to hold, queued again
    unanswered: int = 0  # winners whose request ended without an answer (dropped, not charged)
    redeemed_face_value: int = 0  # token base units credited by those redemptions
    withdrawn: int = 0  # token base units withdrawn to the operator
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "accepted": self.accepted,
                "winners": self.winners,
                "unpaid": self.unpaid,
                "refused": self.refused,
                "redeemed": self.redeemed,
                "failed": self.failed,
                "requeued": self.requeued,
                "unanswered": self.unanswered,
                "redeemed_face_value": self.redeemed_face_value,
                "withdrawn": self.withdrawn,
            }
