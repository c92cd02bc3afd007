"""Anonymous credits against tickets through `veil up`'s whole network: TTFT and tokens/s.

Run: .venv/bin/python benchmarks/credits.py [--rounds 8] [--tokens 48]

One `veil up` network (chain, two nodes, relay, its gateway, which pays with tokens: the
default). A second gateway on the same chain, relay and wallet runs with `--no-tokens` (every
request carries a ticket): the baseline. The same streamed chat goes through each, A/B
interleaved per round (the machine is shared), after a warm-up that also makes each gateway's
first token purchase. Medians printed, with the targets of issue 14 (within 5 ms and 2 %).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
from rich.console import Console

from veil.commands.supervise import Service
from veil.commands.up import LocalNetwork, NetworkConfig, pick_port

sys.path.insert(0, str(Path(__file__).parent))
from transport import stream_once  # the same timed request as the transport benchmark


def ticket_gateway(net: LocalNetwork) -> tuple[Service, str]:
    """A second gateway on `net`, paying every request with a ticket."""
    port = pick_port(0)
    url = f"http://127.0.0.1:{port}"
    service = Service(
        "gateway-tickets",
        [
            "gateway",
            "--relay",
            net.relay_url,
            "--chain",
            str(net.deployment_path),
            "--wallet",
            str(net.wallet_path),
            "--port",
            str(port),
            "--no-tokens",
        ],
        net.data_dir / "logs" / "gateway-tickets.log",
        health_url=url + "/v1/models",
    )
    service.start()
    service.wait_ready(url + "/v1/models", timeout=120)
    return service, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="requests per side (alternating)")
    parser.add_argument("--tokens", type=int, default=48, help="max_tokens per request")
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="veil-bench-"))
    settings = NetworkConfig(chain_port=0, node_ports=(0, 0), relay_port=0, gateway_port=0)
    net = LocalNetwork(data, settings)
    second = None
    try:
        net.start(Console(stderr=True))
        second, tickets_url = ticket_gateway(net)
        client = httpx.Client(timeout=300)
        sides = {
            "tickets (--no-tokens)": tickets_url + "/v1/chat/completions",
            "tokens (the default)": net.gateway_url + "/v1/chat/completions",
        }
        for url in sides.values():  # warm up: sessions, and both nodes' first token purchase
            for _ in range(4):
                stream_once(client, url, 4)
        results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, url in sides.items():
                results[name].append(stream_once(client, url, args.tokens))
        print(f"\n{args.rounds} streamed chats of {args.tokens} tokens per side, medians\n")
        print(f"{'payment':24} {'TTFT ms':>9} {'tokens/s':>9}")
        summary = {}
        for name, runs in results.items():
            ttft = statistics.median(r[0] for r in runs) * 1000
            rate = statistics.median(r[1] for r in runs)
            summary[name] = (ttft, rate)
            print(f"{name:24} {ttft:9.1f} {rate:9.2f}")
        (t_ttft, t_rate), (c_ttft, c_rate) = summary.values()
        print(f"\ntokens vs tickets: TTFT {c_ttft - t_ttft:+.1f} ms (target within 5 ms), ", end="")
        print(f"tokens/s {100 * (c_rate - t_rate) / t_rate:+.1f} % (target within 2 %)")
    finally:
        if second is not None:
            second.stop()
        net.stop()


if __name__ == "__main__":
    main()
