"""Network benchmark: the same streamed chat through the full Veil path and directly to a node.

Full path: the `openai`-style request to the local gateway, which picks a verified node, pays
it with a signed ticket, seals the request with OHTTP, sends it through the relay and checks
the receipt. Direct: the same request to one node's plaintext API, with a ticket as well (the
node does the same payment check either way). Both in one run of `veil up`'s network.

Then a concurrency sweep through the gateway: how many simultaneous streams the two-node
network takes before the median time to first token passes one second.

    .venv/bin/python benchmarks/network.py [--rounds 6] [--tokens 48] [--max-streams 16]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import secrets
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
from rich.console import Console

from veil.chain import ChainClient, Deployment
from veil.chain.payment import TICKET_HEADER, TICKET_PARAMS_PATH, PaymentTicket, TicketParams
from veil.commands.up import LocalNetwork, NetworkConfig
from veil.identity.keystore import load_keystore

sys.path.insert(0, str(Path(__file__).parent))
from transport import stream_once  # the same timed request as the transport benchmark


class DirectPayer:
    """Tickets for direct requests to one node, from the same wallet the gateway uses."""

    def __init__(self, node_url: str, wallet_key: bytes, chain: ChainClient) -> None:
        from eth_account import Account

        self.node_url, self.key, self.chain = node_url, wallet_key, chain
        self.sender = str(Account.from_key(wallet_key).address)

    def headers(self) -> dict[str, str]:
        """A fresh ticket on the node's current offer (fetched outside the timed request: a
        winning ticket retires the node's random value)."""
        params = TicketParams.parse(httpx.get(self.node_url + TICKET_PARAMS_PATH).content)
        expiry = self.chain.chain_time() + 86_400
        ticket = params.ticket(self.sender, secrets.randbits(128), expiry)
        return {TICKET_HEADER: PaymentTicket.sign(ticket, params.domain, self.key).header_value()}


def sweep(gateway: str, tokens: int, max_streams: int) -> list[tuple[int, float, float]]:
    """(streams, median TTFT s, max TTFT s) per concurrency level, until the median passes 1 s."""
    rows = []
    level = 1
    client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=64))
    url = gateway + "/v1/chat/completions"
    while level <= max_streams:
        with concurrent.futures.ThreadPoolExecutor(level) as pool:
            runs = list(pool.map(lambda _: stream_once(client, url, tokens), range(level)))
        ttfts = [r[0] for r in runs]
        rows.append((level, statistics.median(ttfts), max(ttfts)))
        print(
            f"  {level:3d} streams: TTFT median {statistics.median(ttfts) * 1000:7.0f} ms, "
            f"max {max(ttfts) * 1000:7.0f} ms",
            flush=True,
        )
        if statistics.median(ttfts) > 1.0:
            break
        level = level * 2 if level < 8 else level + 4
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="requests per path (alternating)")
    parser.add_argument("--tokens", type=int, default=48, help="max_tokens per request")
    parser.add_argument("--max-streams", type=int, default=16, help="concurrency sweep limit")
    parser.add_argument("--sweep-tokens", type=int, default=16, help="max_tokens in the sweep")
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="veil-bench-"))
    settings = NetworkConfig(chain_port=0, node_ports=(0, 0), relay_port=0, gateway_port=0)
    net = LocalNetwork(data, settings)
    try:
        net.start(Console(stderr=True))
        chain = ChainClient(Deployment.load(net.deployment_path))
        node_url = net.node_urls["node-a"]
        payer = DirectPayer(node_url, bytes(load_keystore(net.wallet_path).key), chain)
        client = httpx.Client(timeout=300)
        full = (net.gateway_url + "/v1/chat/completions", None)
        direct = (node_url + "/v1/chat/completions", payer)
        for url, p in (full, direct):  # warm up
            stream_once(client, url, 4, p.headers() if p else None)
        results: dict[str, list[tuple[float, float, int]]] = {"direct": [], "full path": []}
        for _ in range(args.rounds):
            results["direct"].append(stream_once(client, direct[0], args.tokens, payer.headers()))
            results["full path"].append(stream_once(client, full[0], args.tokens))
        print(f"\n{'path':28} {'TTFT ms (median)':>17} {'tokens/s (median)':>18}")
        summary = {}
        for name, runs in results.items():
            ttft = statistics.median(r[0] for r in runs) * 1000
            rate = statistics.median(r[1] for r in runs)
            summary[name] = (ttft, rate)
            label = "direct (node plaintext API)" if name == "direct" else "gateway+relay+node"
            print(f"{label:28} {ttft:17.1f} {rate:18.2f}")
        (d_ttft, d_rate), (f_ttft, f_rate) = summary["direct"], summary["full path"]
        print(f"\nadded time to first token: {f_ttft - d_ttft:+.1f} ms   (target within 20 ms)")
        print(
            f"tokens/s, full vs direct:  {100 * (f_rate - d_rate) / d_rate:+.1f} %  "
            f"(target within 10 %)"
        )
        print("\nconcurrency sweep through the gateway (two nodes):")
        rows = sweep(net.gateway_url, args.sweep_tokens, args.max_streams)
        ok = [level for level, median, _ in rows if median <= 1.0]
        print(
            f"\nsustained before median TTFT passes 1 s: {max(ok) if ok else 0} concurrent "
            f"streams ({args.sweep_tokens} tokens each)"
        )
    finally:
        net.stop()


if __name__ == "__main__":
    main()
