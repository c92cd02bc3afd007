"""Scale (issue 17): `veil up`'s network with 1,000 more registered nodes, most of them bad.

The two real nodes of `veil up` serve; 1,000 more operators stake and register the same model,
with endpoints that are closed (70 %), tarpits that accept TCP and never answer (20 %), or
trickle one byte every few seconds (10 %). The gateway has to discover them all, check them
in the background, and still answer a user as fast as in the clean network; the relay has to
hold the larger directory without growing.

Phases, in one run on one chain:

* A: the clean two-node network;
* B: the 1,000 nodes registered (after a warm-up in which the gateway meets them all);
* A': the 1,000 nodes unbonded (inactive again), the same two nodes left.

Per phase: the gateway's time to first token (streamed chats, one at a time), the time of
`GET /v1/models`, and the RSS of the relay and the gateway. B is compared with the mean of A
and A' (noisy machine: the baseline brackets the candidate in time); the target is within
10 %. The gateway's view refresh at 1,000 nodes is timed from its chain client directly.

    .venv/bin/python benchmarks/scale.py [--nodes 1000] [--requests 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from eth_account import Account
from rich.console import Console

from veil.chain import ChainClient, Deployment
from veil.commands.up import LocalNetwork, NetworkConfig
from veil.engine import PACKAGED_MODEL_ID
from veil.wire.http import CHAT_PATH, MODELS_PATH

SHARES = (("closed", 0.7), ("tarpit", 0.2), ("trickle", 0.1))
GAS_PRICE = 2 * 10**9
RPC_BATCH = 200


# ---------------------------------------------------------------- bad endpoints


def closed_ports(count: int) -> list[int]:
    """Ports nothing listens on: bound once to learn a free number, then closed."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def _serve_stalls(tarpits: int, tricklers: int, every: float) -> None:
    """Child process: `tarpits` servers that accept and never answer, `tricklers` that send
    one byte of an HTTP answer every `every` seconds, forever. Prints the ports as JSON."""

    async def tarpit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass
        writer.close()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer = b"HTTP/1.1 200 OK\r\ncontent-type: message/ohttp-res\r\n" + b"x" * 4096
        with contextlib.suppress(Exception):
            for byte in answer:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(every)
        writer.close()

    servers = [await asyncio.start_server(tarpit, "127.0.0.1", 0) for _ in range(tarpits)]
    servers += [await asyncio.start_server(trickle, "127.0.0.1", 0) for _ in range(tricklers)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    print(json.dumps({"tarpit": ports[:tarpits], "trickle": ports[tarpits:]}), flush=True)
    await asyncio.Event().wait()


# ---------------------------------------------------------------- registration


class Rpc:
    """JSON-RPC batches straight to anvil: thousands of transactions in seconds."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=120)
        self._id = 0

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        results: list[Any] = []
        for i in range(0, len(calls), RPC_BATCH):
            body = []
            for method, params in calls[i : i + RPC_BATCH]:
                self._id += 1
                body.append({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params})
            answers = sorted(self.client.post("", json=body).json(), key=lambda a: a["id"])
            for a in answers:
                if "error" in a:
                    raise RuntimeError(f"rpc error: {a['error']}")
                results.append(a["result"])
        return results

    def send(self, signed: list[bytes]) -> None:
        """Send raw transactions, then check every one was mined and succeeded."""
        hashes = self.batch([("eth_sendRawTransaction", ["0x" + tx.hex()]) for tx in signed])
        deadline = time.monotonic() + 120
        while True:
            receipts = self.batch([("eth_getTransactionReceipt", [h]) for h in hashes])
            if all(r is not None for r in receipts):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("transactions not mined in 120 s")
            time.sleep(0.2)
        failed = [h for h, r in zip(hashes, receipts, strict=True) if r["status"] != "0x1"]
        if failed:
            raise RuntimeError(f"{len(failed)} transaction(s) reverted, e.g. {failed[0]}")


def _signed(account: Any, nonce: int, to: str, data: str, chain_id: int) -> bytes:
    tx = {
        "to": to,
        "data": data,
        "nonce": nonce,
        "gas": 600_000,
        "gasPrice": GAS_PRICE,
        "chainId": chain_id,
        "value": 0,
    }
    return bytes(account.sign_transaction(tx).raw_transaction)


@dataclass
class Crowd:
    """The extra operators: their accounts and endpoint kinds."""

    accounts: list[Any]
    kinds: list[str]
    stake: int = 0


def register_crowd(
    governance: ChainClient, rpc: Rpc, endpoints: list[tuple[str, str]], console: Console
) -> Crowd:
    """Fund, stake and register one operator per endpoint, announcing the packaged model."""
    registry, token = governance.registry, governance.token
    chain_id = governance.deployment.chain_id
    model = next(m for n in governance.active_nodes() for m in n.models)
    stake = governance.min_stake()
    accounts = [Account.create() for _ in endpoints]
    t0 = time.monotonic()
    rpc.batch([("anvil_setBalance", [a.address, hex(10**20)]) for a in accounts])
    minter = governance.account
    assert minter is not None
    nonce = governance.w3.eth.get_transaction_count(minter.address)
    rpc.send(
        [
            _signed(
                minter,
                nonce + i,
                token.address,
                token.encode_abi("mint", [a.address, stake]),
                chain_id,
            )
            for i, a in enumerate(accounts)
        ]
    )
    rpc.send(
        [
            _signed(
                a,
                0,
                token.address,
                token.encode_abi("approve", [registry.address, stake]),
                chain_id,
            )
            for a in accounts
        ]
    )
    rpc.send(
        [
            _signed(
                a,
                1,
                registry.address,
                registry.encode_abi(
                    "register",
                    [
                        url,
                        secrets.token_bytes(32),
                        secrets.token_bytes(32),
                        [(model.model_id, model.weights_hash)],
                        stake,
                    ],
                ),
                chain_id,
            )
            for a, (_kind, url) in zip(accounts, endpoints, strict=True)
        ]
    )
    console.print(f"registered {len(accounts)} operators in {time.monotonic() - t0:.1f} s")
    return Crowd(accounts, [kind for kind, _url in endpoints], stake)


def unbond_crowd(governance: ChainClient, rpc: Rpc, crowd: Crowd) -> None:
    registry, chain_id = governance.registry, governance.deployment.chain_id
    data = registry.encode_abi("unbond", [crowd.stake])
    rpc.send([_signed(a, 2, registry.address, data, chain_id) for a in crowd.accounts])


# ---------------------------------------------------------------- measuring


@dataclass
class Phase:
    name: str
    ttft: list[float] = field(default_factory=list)
    models: list[float] = field(default_factory=list)
    rss: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def rss_mb(pid: int) -> float:
    """The service's RSS: the process and its children (a service runs under a lifeline)."""
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        rss = proc.memory_info().rss
        rss += sum(c.memory_info().rss for c in proc.children(recursive=True))
        return rss / 2**20
    return float("nan")


async def first_token(client: httpx.AsyncClient, url: str, prompt: str) -> float:
    """Seconds from sending a streamed chat to its first content chunk."""
    body = {
        "model": PACKAGED_MODEL_ID,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
    }
    t0 = time.perf_counter()
    async with client.stream("POST", url + CHAT_PATH, json=body, timeout=60) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread())[:200]!r}")
        first = None
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: ") and '"content"' in line:
                first = time.perf_counter() - t0
    if first is None:
        raise RuntimeError("stream ended without content")
    return first


async def measure(net: LocalNetwork, name: str, requests: int) -> Phase:
    """`requests` chats one at a time (a fifth of a second apart), then as many listings:
    a listing sweeps every node, so it is timed on its own, not between the chats."""
    phase = Phase(name)
    pids = {s.name: s.proc.pid for s in (net.relay, net.gateway) if s and s.proc}
    async with httpx.AsyncClient() as client:
        for i in range(requests):
            try:
                phase.ttft.append(await first_token(client, net.gateway_url, f"Say {i}."))
            except (httpx.HTTPError, RuntimeError) as err:
                phase.errors.append(str(err)[:120])
            for pname, pid in pids.items():
                phase.rss.setdefault(pname, []).append(rss_mb(pid))
            await asyncio.sleep(0.2)
        for _ in range(requests):
            t0 = time.perf_counter()
            r = await client.get(net.gateway_url + MODELS_PATH, timeout=30)
            phase.models.append(time.perf_counter() - t0)
            if r.status_code != 200:
                phase.errors.append(f"/v1/models {r.status_code}")
    return phase


async def warm(net: LocalNetwork, seconds: float) -> None:
    """Let the gateway meet the network: chats and listings for `seconds`."""
    end = time.monotonic() + seconds
    async with httpx.AsyncClient() as client:
        while time.monotonic() < end:
            with contextlib.suppress(httpx.HTTPError, RuntimeError):
                await first_token(client, net.gateway_url, "Hello.")
                await client.get(net.gateway_url + MODELS_PATH, timeout=30)
            await asyncio.sleep(0.5)


def view_refresh_s(deployment: Deployment, repeats: int = 3) -> list[float]:
    """Seconds a gateway's chain client takes to read the active registry, first and again."""
    client = ChainClient(deployment)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        client.active_nodes()
        times.append(time.perf_counter() - t0)
    return times


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(phases: list[Phase], console: Console, target: float) -> list[str]:
    a, b, a2 = phases
    failed: list[str] = []
    console.print(f"\n{'':28}{'A clean':>12}{'B +crowd':>12}{'A2 clean':>12}{'B/mean(A)':>12}")

    def row(label: str, va: float, vb: float, va2: float, check: bool) -> None:
        base = (va + va2) / 2
        ratio = vb / base if base else float("nan")
        verdict = ""
        if check:
            ok = ratio <= 1 + target
            verdict = "  ok" if ok else "  MISSED"
            if not ok:
                failed.append(f"{label}: {ratio:.3f} of the clean network")
        console.print(f"{label:28}{va:12.3f}{vb:12.3f}{va2:12.3f}{ratio:12.3f}{verdict}")

    row("TTFT median (s)", med(a.ttft), med(b.ttft), med(a2.ttft), True)
    row("TTFT p90 (s)", pct(a.ttft, 0.9), pct(b.ttft, 0.9), pct(a2.ttft, 0.9), False)
    row("/v1/models median (s)", med(a.models), med(b.models), med(a2.models), False)
    for name in a.rss:
        row(
            f"{name} RSS max (MB)",
            max(a.rss[name]),
            max(b.rss[name]),
            max(a2.rss[name]),
            name == "relay",
        )
    for p in phases:
        if p.errors:
            failed.append(f"phase {p.name}: {len(p.errors)} error(s), e.g. {p.errors[0]}")
    return failed


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


# ---------------------------------------------------------------- main


async def run(net: LocalNetwork, args: argparse.Namespace, console: Console) -> list[str]:
    deployment = Deployment.load(net.deployment_path)
    governance = ChainClient(deployment, net.devnet.accounts[0].private_key)
    rpc = Rpc(deployment.rpc_url)

    counts = {kind: round(args.nodes * share) for kind, share in SHARES}
    counts["closed"] = args.nodes - counts["tarpit"] - counts["trickle"]
    stalls = subprocess.Popen(
        [sys.executable, __file__, "--serve-stalls", str(counts["tarpit"]), str(counts["trickle"])],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert stalls.stdout is not None
        ports = json.loads(stalls.stdout.readline())
        endpoints = [("closed", f"http://127.0.0.1:{p}") for p in closed_ports(counts["closed"])]
        endpoints += [("tarpit", f"http://127.0.0.1:{p}") for p in ports["tarpit"]]
        endpoints += [("trickle", f"http://127.0.0.1:{p}") for p in ports["trickle"]]

        console.print(f"warm-up, then phase A: {args.requests} chats on the clean network")
        await warm(net, args.warm)
        a = await measure(net, "A", args.requests)

        crowd = register_crowd(governance, rpc, endpoints, console)
        refresh = view_refresh_s(deployment)
        console.print(
            f"chain view of {len(governance.active_nodes())} active nodes read in "
            + ", ".join(f"{t:.2f}" for t in refresh)
            + " s (first, then again)"
        )
        console.print(f"warm-up {args.warm:.0f} s with the crowd, then phase B")
        await warm(net, args.warm)
        b = await measure(net, "B", args.requests)

        unbond_crowd(governance, rpc, crowd)
        console.print(f"crowd unbonded; warm-up {args.warm:.0f} s, then phase A2")
        await warm(net, args.warm)
        a2 = await measure(net, "A2", args.requests)
    finally:
        stalls.kill()
        stalls.wait()
    console.print(
        f"\nnodes: 2 real + {args.nodes} ("
        + ", ".join(f"{n} {k}" for k, n in counts.items())
        + f"); {args.requests} chats per phase, 4 tokens each, one at a time"
    )
    return report([a, b, a2], console, args.target)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-stalls":
        asyncio.run(_serve_stalls(int(sys.argv[2]), int(sys.argv[3]), every=3.0))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000, help="extra registered nodes")
    parser.add_argument("--requests", type=int, default=30, help="chats per phase")
    parser.add_argument("--warm", type=float, default=30.0, help="warm-up per phase, in s")
    parser.add_argument("--target", type=float, default=0.10, help="allowed slowdown")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="veil-scale-"))
    net = LocalNetwork(
        data, NetworkConfig(chain_port=0, node_ports=(0, 0), relay_port=0, gateway_port=0)
    )
    console = Console()
    failed: list[str] = []
    try:
        net.start(Console(stderr=True))
        failed = asyncio.run(run(net, args, console))
    finally:
        net.stop()
        if args.keep:
            print(f"data directory kept: {data}")
        else:
            shutil.rmtree(data, ignore_errors=True)
    print("\nPASS: every target held" if not failed else "\nFAIL:\n  " + "\n  ".join(failed))
    os._exit(1 if failed else 0)


if __name__ == "__main__":
    main()
