"""Transport benchmark: the same streamed chat sent directly to a node's plaintext API and sent
sealed with OHTTP through a relay, in one run (node and relay as separate processes).

Prints time to first token and tokens/s for each path, the difference, and the per-message
OHTTP costs (from benchmarks/ohttp.py).

    .venv/bin/python benchmarks/transport.py [--rounds 8] [--tokens 48]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from veil.client.transport import OhttpTransport, relay_keys_url
from veil.commands.up import Service, pick_port
from veil.engine import PACKAGED_MODEL_ID

sys.path.insert(0, str(Path(__file__).parent))
import ohttp as ohttp_bench


def stream_once(
    client: httpx.Client, url: str, tokens: int, headers: dict[str, str] | None = None
) -> tuple[float, float, int]:
    """(seconds to first content token, tokens/s after it, content chunks) for one chat."""
    body = {
        "model": PACKAGED_MODEL_ID,
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    first = last = None
    count = 0
    with client.stream("POST", url, json=body, headers=headers or {}) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code} from {url}: {r.read().decode()[:300]}")
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:]).get("choices")
            if delta and delta[0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                count += 1
    assert first is not None and last is not None and count > 1
    return first - start, (count - 1) / (last - first), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="requests per path (alternating)")
    parser.add_argument("--tokens", type=int, default=48, help="max_tokens per request")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="veil-bench-"))
    node_port, relay_port = pick_port(0), pick_port(0)
    node_url, relay_url = f"http://127.0.0.1:{node_port}", f"http://127.0.0.1:{relay_port}"
    (tmp / "nodes.json").write_text(json.dumps({"nodes": [{"id": "n1", "url": node_url}]}))
    node = Service("node", ["node", "serve", "--port", str(node_port)], tmp / "node.log")
    relay = Service(
        "relay",
        [
            "relay",
            "serve",
            "--nodes",
            str(tmp / "nodes.json"),
            "--port",
            str(relay_port),
            "--rate",
            "1000",
            "--burst",
            "1000",
            "--allow-private-endpoints",
        ],
        tmp / "relay.log",
    )
    try:
        print("starting node (loading model) and relay...", flush=True)
        node.start()
        relay.start()
        node.wait_ready(f"{node_url}/healthz", 300)
        relay.wait_ready(f"{relay_url}/relay/n1/ohttp-keys", 60)
        direct = httpx.Client(timeout=120)
        sealed = httpx.Client(
            transport=OhttpTransport(relay_url, "n1", keys_url=relay_keys_url(relay_url, "n1")),
            timeout=120,
        )
        paths = {
            "direct, plaintext": (direct, f"{node_url}/v1/chat/completions"),
            "OHTTP via relay": (sealed, "http://node.veil.invalid/v1/chat/completions"),
        }
        for client, url in paths.values():  # warm up
            stream_once(client, url, 4)
        results: dict[str, list[tuple[float, float, int]]] = {k: [] for k in paths}
        for _ in range(args.rounds):
            for name, (client, url) in paths.items():
                results[name].append(stream_once(client, url, args.tokens))
    finally:
        relay.stop()
        node.stop()

    print(f"\n{'path':22} {'TTFT ms (median)':>17} {'tokens/s (median)':>18} {'tokens':>7}")
    summary = {}
    for name, runs in results.items():
        ttft = statistics.median(r[0] for r in runs) * 1000
        rate = statistics.median(r[1] for r in runs)
        summary[name] = (ttft, rate)
        print(f"{name:22} {ttft:17.1f} {rate:18.2f} {runs[0][2]:7d}")
    (d_ttft, d_rate), (s_ttft, s_rate) = summary.values()
    print(f"\nadded time to first token: {s_ttft - d_ttft:+.1f} ms   (target < 3 ms)")
    print(f"throughput change:         {100 * (s_rate - d_rate) / d_rate:+.1f} %  (target > -2 %)")
    print("\nper-message OHTTP cost (microseconds):")
    ohttp_bench.main()


if __name__ == "__main__":
    main()
