"""The explorer's chain reads are bounded where they are made, and cut before they are shown."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from veil.chain.errors import ChainUnavailable
from veil.chain.types import RedeemedTicket, ReleaseAction, ReleaseEntry, SenderFunds
from veil.client.web.explorer import MAX_ROWS, TICKET_BLOCKS, explorer_snapshot

PAYER = "0x" + "11" * 20


@dataclass
class StuffedChain:
    """A chain whose logs hold far more than a screenful (and whose deposits read fails)."""

    asked: dict[str, Any] = field(default_factory=dict)

    def block_number(self) -> int:
        return 1_000_000

    def releases(self, last: int | None = None) -> list[ReleaseEntry]:
        self.asked["releases"] = last
        return [
            ReleaseEntry(i, ReleaseAction.APPROVE, bytes(32), b"\x01", None, "n" * 5000, 0, True)
            for i in range(1000)
        ]

    def redeemed_tickets(self, from_block: int | None = None) -> list[RedeemedTicket]:
        self.asked["from_block"] = from_block
        return [RedeemedTicket(PAYER, PAYER, bytes(32), 1, i, "0x00") for i in range(1000)]

    def earnings(self, operator: str) -> int:
        return 7

    def sender_funds(self, sender: str) -> SenderFunds:
        raise ChainUnavailable("down")


def test_reads_are_bounded_and_failures_named() -> None:
    chain = StuffedChain()
    nodes = [{"address": f"0x{i:040x}", "stake": "1"} for i in range(1000)]
    out = explorer_snapshot(chain, nodes, wallet=PAYER)
    assert chain.asked == {"releases": MAX_ROWS, "from_block": 1_000_000 - TICKET_BLOCKS}
    assert len(out["nodes"]) == len(out["releases"]) == len(out["redeemed"]) == MAX_ROWS
    assert out["releases"][-1]["index"] == 999  # the newest kept
    assert max(len(r["note"]) for r in out["releases"]) == 200
    assert out["nodes"][0]["earnings"] == "7"
    assert out["deposits"] == [] and out["errors"] == {"deposits": "ChainUnavailable"}
