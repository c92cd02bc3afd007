"""Anonymous credits: what issuing and redeeming one token costs, against a ticket's check.

Run: .venv/bin/python benchmarks/tokens.py [--rounds 5] [--batch 64]

Measured per token, A/B interleaved (the machine is shared): the client's blinding, the
node's blind signature (RSA-2048 CRT with gmpy2 powmod_sec), the client's unblinding and
verification, and the node's redemption (parse, verify, fsync to the spent set); the baseline,
in the same run, is the node's check of one ticket (EIP-712 signature recovery), which a
token redemption replaces. Also printed: on-chain transactions per 1,000 requests, tickets
alone against tokens bought in batches (computed from the win probability, not measured).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.payments import (
    DOMAIN,
    FakeFundsSource,
    account,
    write_ticket,
)
from veil.chain.tickets import win_prob_for
from veil.identity import NodeIdentity
from veil.identity.credits.token import (
    begin_issuance,
    encode_token_header,
    finish_issuance,
    node_challenge,
)
from veil.node.credits import SpentSet, TokenDesk, TokenKeyring
from veil.node.payments import TicketDesk, TicketQueue


def _per_item_us(start: float, count: int) -> float:
    return (time.perf_counter() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="tokens per purchase")
    parser.add_argument("--win-prob", type=float, default=0.1, help="ticket win probability")
    args = parser.parse_args()

    node = NodeIdentity.generate()
    sender = account(7)
    results: dict[str, list[float]] = {
        k: [] for k in ("blind", "sign", "finalize", "redeem", "ticket")
    }
    with tempfile.TemporaryDirectory() as tmp:
        desk = TokenDesk(node.address, TokenKeyring(Path(tmp)), SpentSet(Path(tmp)))
        key = desk.keyring.current()
        tickets = TicketDesk(
            node.address,
            DOMAIN,
            FakeFundsSource(),
            TicketQueue(None),
            win_prob=win_prob_for(args.win_prob),
        )
        params = tickets.params()
        challenge = node_challenge(node.address)
        for _ in range(args.rounds):
            # B: the ticket baseline (form, value and signature recovery; no chain)
            headers = [
                write_ticket(params, sender, n, expiry=int(time.time()) + 3600).header_value()
                for n in range(args.batch)
            ]
            start = time.perf_counter()
            for header in headers:
                tickets._verify(header)
            results["ticket"].append(_per_item_us(start, len(headers)))
            # A: the token's life
            start = time.perf_counter()
            pending = [begin_issuance(key.public_key, challenge) for _ in range(args.batch)]
            results["blind"].append(_per_item_us(start, args.batch))
            batch = [r.encode() for r, _ in pending]
            start = time.perf_counter()
            desk.check_batch(batch)
            _, sigs = desk.issue(batch)
            results["sign"].append(_per_item_us(start, args.batch))
            start = time.perf_counter()
            tokens = [
                finish_issuance(key.public_key, s, sigs[i * 256 : (i + 1) * 256])
                for i, (_, s) in enumerate(pending)
            ]
            results["finalize"].append(_per_item_us(start, args.batch))
            start = time.perf_counter()
            for token in tokens:
                desk._redeem(encode_token_header([token]))
            results["redeem"].append(_per_item_us(start, args.batch))

    print(f"{args.rounds} rounds x {args.batch} tokens; median microseconds per token\n")
    labels = {
        "blind": "client: blind (EMSA-PSS + r^e)",
        "sign": "node: blind-sign (CRT powmod_sec + check)",
        "finalize": "client: unblind + verify",
        "redeem": "node: redeem (verify + fsync spent set)",
        "ticket": "baseline, node: check one ticket (EIP-712)",
    }
    for key_name, label in labels.items():
        print(f"{label:<46} {statistics.median(results[key_name]):>9.0f} us")
    ratio = statistics.median(results["redeem"]) / statistics.median(results["ticket"])
    print(f"\nredeeming a token costs {ratio:.2f}x checking a ticket")
    per_1000_tickets = 1000 * args.win_prob
    per_1000_tokens = 1000 / args.batch * args.win_prob
    print(
        f"on-chain transactions per 1,000 requests (win probability {args.win_prob}): "
        f"tickets {per_1000_tickets:.1f}, tokens in batches of {args.batch} "
        f"{per_1000_tokens:.2f} (plus withdrawals, the same for both)"
    )


if __name__ == "__main__":
    main()
