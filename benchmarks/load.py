"""Load test (issue 17): concurrent clients through `veil up`'s network, a node killed midway.

N clients for D seconds; one node is killed (SIGKILL) at D/2 and restarted.

Each client sends small chats in a loop (16 tokens; half streamed, half whole; a quarter with
temperature 0.7) to the local gateway. Checked at the end:

* outcomes: every request is a 200 with a verified receipt or a typed error (an OpenAI-style
  error body with a code, or a streamed error event); anything else (a reset, a hang past
  --request-timeout, a body that is not OpenAI-shaped, a stream cut without an error) fails;
* receipts: a whole 200 says `x-veil-receipt: verified`, a streamed one ends with `[DONE]`
  (the gateway passes it only after the receipt check); each names the ticket the answer paid
  and its signature recovers to the node in `x-veil-node`;
* billing: tickets the nodes accepted (their /healthz counters and logs) against answers they
  served, and every winning ticket (the nodes' ticket queues and the broker's redemptions on
  chain) against the tickets of answered requests;
* memory: the RSS of every service process, sampled every few seconds; flat = the
  least-squares growth over a process's life after its warm-up (the first third) is under 5 %
  of its mean RSS.

The baseline, in the same run: one client alone before the load; then the load's phases
(before the kill, while the node is down, after it is back).

    .venv/bin/python benchmarks/load.py [--clients 64] [--duration 300] [--kill-at 150]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console

from veil.chain import ChainClient, Deployment
from veil.chain.deployment import TOKEN
from veil.chain.payment import PaymentTicket
from veil.client.receipts import ReceiptStore
from veil.commands.up import LocalNetwork, NetworkConfig, Service
from veil.engine import PACKAGED_MODEL_ID
from veil.identity.keystore import load_keystore
from veil.identity.receipt import Receipt
from veil.wire.http import (
    CHAT_PATH,
    NODE_HEADER,
    RECEIPT_HEADER,
    RECEIPT_ID_HEADER,
    TICKET_ID_HEADER,
)

PROMPTS = (
    "Name a colour.",
    "Say hello in French.",
    "What is two plus two?",
    "Give me a word that rhymes with cat.",
    "Name a planet.",
    "Write a four-word sentence about rain.",
    "What is the capital of Italy?",
    "List three fruits.",
)
MAX_TOKENS = 16
KILLED = "node-a"


@dataclass
class Outcome:
    """One request as the client saw it."""

    client: int
    started: float  # seconds since the load began (negative: the baseline)
    stream: bool
    latency: float = 0.0
    kind: str = "untyped"  # ok | typed | untyped
    status: int | None = None
    code: str | None = None  # the error code (typed) or what went wrong (untyped)
    ttft: float | None = None  # to the first content token (streams)
    node: str | None = None  # x-veil-node
    ticket: str | None = None  # x-veil-ticket-id
    receipt_id: str | None = None  # x-veil-receipt-id
    receipt_ticket: str | None = None  # the ticket id the receipt names
    receipt_signer: str | None = None  # the address the receipt's signature recovers to
    tokens: int = 0


def _error_code(raw: bytes) -> str | None:
    """The code of an OpenAI-style error body, or None when it is not one."""
    try:
        err = json.loads(raw)["error"]
        code, message = err["code"], err["message"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) and code and isinstance(message, str) else None


def _take_receipt(out: Outcome, obj: dict[str, Any]) -> None:
    receipt = Receipt.from_json(obj["veil_receipt"])
    out.receipt_ticket = "0x" + receipt.ticket_id.hex()
    out.receipt_signer = receipt.signer()
    out.tokens = receipt.completion_tokens


async def _refused(out: Outcome, response: httpx.Response) -> None:
    code = _error_code(await response.aread())
    out.kind, out.code = ("typed", code) if code else ("untyped", "error body not OpenAI-shaped")


async def _whole(client: httpx.AsyncClient, url: str, body: dict[str, Any], out: Outcome) -> None:
    response = await client.post(url, json=body)
    _head(out, response)
    if response.status_code != 200:
        await _refused(out, response)
        return
    try:
        obj = response.json()
        assert isinstance(obj["choices"][0]["message"]["content"], str)
        _take_receipt(out, obj)
    except Exception as err:  # any shape problem is the finding, whatever its type
        out.code = f"200 not a chat completion with a receipt ({type(err).__name__})"
        return
    verified = response.headers.get(RECEIPT_HEADER) == "verified"
    out.kind, out.code = ("ok", None) if verified else ("untyped", "200 without receipt header")


async def _streamed(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], out: Outcome, t: float
) -> None:
    async with client.stream("POST", url, json=body) as response:
        _head(out, response)
        if response.status_code != 200:
            await _refused(out, response)
            return
        done, error, receipt = False, None, False
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                continue
            try:
                obj = json.loads(data)
                if "error" in obj:
                    error = _error_code(data.encode()) or "error event without a code"
                    continue
                delta = obj["choices"][0]["delta"] if obj.get("choices") else {}
                if delta.get("content") and out.ttft is None:
                    out.ttft = time.monotonic() - t
                if "veil_receipt" in obj:
                    _take_receipt(out, obj)
                    receipt = True
            except Exception as err:
                out.code = f"event not a chat chunk ({type(err).__name__})"
                return
    if error is not None:
        typed = not error.startswith("error event")
        out.kind, out.code = ("typed" if typed else "untyped"), error
    elif done and receipt:
        out.kind = "ok"
    else:
        out.code = "stream ended without [DONE] or an error" if not done else "no receipt"


def _head(out: Outcome, response: httpx.Response) -> None:
    out.status = response.status_code
    out.node = response.headers.get(NODE_HEADER)
    out.ticket = response.headers.get(TICKET_ID_HEADER)
    out.receipt_id = response.headers.get(RECEIPT_ID_HEADER)


async def request(
    client: httpx.AsyncClient, url: str, i: int, n: int, rng: random.Random, t0: float, limit: float
) -> Outcome:
    """One chat with a timeout; never raises."""
    stream = (i + n) % 2 == 0
    body: dict[str, Any] = {
        "model": PACKAGED_MODEL_ID,
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.7 if rng.random() < 0.25 else 0.0,
        "stream": stream,
    }
    t = time.monotonic()
    out = Outcome(i, t - t0, stream)
    try:
        if stream:
            await asyncio.wait_for(_streamed(client, url, body, out, t), limit)
        else:
            await asyncio.wait_for(_whole(client, url, body, out), limit)
    except TimeoutError:
        out.kind, out.code = "untyped", f"no end within {limit:.0f} s"
    except httpx.HTTPError as err:
        out.kind, out.code = "untyped", type(err).__name__
    out.latency = time.monotonic() - t
    return out


async def client_loop(
    client: httpx.AsyncClient,
    url: str,
    i: int,
    t0: float,
    until: float,
    limit: float,
    results: list[Outcome],
) -> None:
    rng = random.Random(i)
    await asyncio.sleep(i * 0.05)  # spread the first requests over a few seconds
    n = 0
    while time.monotonic() - t0 < until:
        results.append(await request(client, url, i, n, rng, t0, limit))
        n += 1


# ---------------------------------------------------------------- processes and counters


@dataclass
class Monitor:
    """RSS of every service process and the nodes' /healthz counters, per process life."""

    net: LocalNetwork
    t0: float
    rss: dict[tuple[str, int], list[tuple[float, float]]] = field(default_factory=dict)
    health: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)

    def processes(self) -> list[tuple[str, int]]:
        procs = [(s.name, s.proc.pid) for s in self.net.services() if s.alive() and s.proc]
        anvil = getattr(self.net.devnet, "_proc", None)
        if anvil is not None and anvil.poll() is None:
            procs.append(("anvil", anvil.pid))
        return procs

    def sample(self) -> None:
        now = time.monotonic() - self.t0
        for name, pid in self.processes():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                rss = proc.memory_info().rss
                rss += sum(c.memory_info().rss for c in proc.children(recursive=True))
                self.rss.setdefault((name, pid), []).append((now, rss / 2**20))

    async def poll_health(self, client: httpx.AsyncClient) -> None:
        for name, service in self.net.nodes.items():
            if not (service.alive() and service.proc):
                continue
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = await client.get(self.net.node_urls[name] + "/healthz", timeout=5)
                if r.status_code == 200:
                    self.health[(name, service.proc.pid)] = r.json()

    async def run(self, client: httpx.AsyncClient, every: float) -> None:
        while True:
            self.sample()
            await self.poll_health(client)
            await asyncio.sleep(every)


@dataclass
class Chaos:
    """What happened to the killed node, in seconds since the load began."""

    pid: int = 0
    killed_at: float = 0.0
    killed_wall: float = 0.0  # unix time of the kill
    back_at: float | None = None  # its /healthz answers again
    log_offset: int = 0  # the log's size at the kill: lines before it are the first life
    restarted_by: str = ""


async def kill_and_restart(
    service: Service, url: str, monitor: Monitor, client: httpx.AsyncClient, at: float, grace: float
) -> Chaos:
    """SIGKILL the node at `at`; restart it if nothing else has within `grace` seconds."""
    t0 = monitor.t0
    await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
    await monitor.poll_health(client)  # the first life's last counters
    assert service.proc is not None
    chaos = Chaos(service.proc.pid, time.monotonic() - t0, time.time())
    await asyncio.to_thread(service.kill)
    chaos.log_offset = service.log_path.stat().st_size
    print(
        f"[{chaos.killed_at:6.1f} s] killed {service.name} (pid {chaos.pid}, SIGKILL)", flush=True
    )
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not service.alive():
        await asyncio.sleep(0.5)
    if service.alive() and service.proc is not None and service.proc.pid != chaos.pid:
        chaos.restarted_by = "veil up's supervision"
    else:
        await asyncio.to_thread(service.stop)  # closes the old log handle
        await asyncio.to_thread(service.start)
        chaos.restarted_by = f"this benchmark, after {grace:.0f} s down"
    while service.alive():
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(url + "/healthz", timeout=2)).status_code == 200:
                chaos.back_at = time.monotonic() - t0
                break
        await asyncio.sleep(0.5)
    print(
        f"[{time.monotonic() - t0:6.1f} s] {service.name} "
        + (f"serving again (restarted by {chaos.restarted_by})" if chaos.back_at else "died")
        + f", pid {service.proc.pid if service.proc else '-'}",
        flush=True,
    )
    return chaos


# ---------------------------------------------------------------- figures


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def phase_row(label: str, outs: list[Outcome], span: float) -> str:
    ok = [o for o in outs if o.kind == "ok"]
    typed = sum(o.kind == "typed" for o in outs)
    untyped = sum(o.kind == "untyped" for o in outs)
    lat = [o.latency for o in ok]
    ttft = [o.ttft for o in ok if o.ttft is not None]
    tokens = sum(o.tokens for o in ok)
    return (
        f"{label:30} {len(outs):5} {len(ok):5} {typed:5} {untyped:5} "
        f"{len(ok) / span if span else 0:6.2f} {tokens / span if span else 0:7.1f} "
        f"{pct(lat, 0.5):6.2f} {pct(lat, 0.95):6.2f} {pct(ttft, 0.5):6.2f} {pct(ttft, 0.95):6.2f}"
    )


def report_phases(base: list[Outcome], outs: list[Outcome], chaos: Chaos, duration: float) -> None:
    back = chaos.back_at if chaos.back_at is not None else duration
    served = [o.started for o in outs if o.kind == "ok" and o.node == "killed" and o.started > back]
    again = min(served, default=duration)
    through = f"at {again:.0f} s" if served else "not within the run"
    print(
        f"\n{'phase (by request start)':30} {'reqs':>5} {'ok':>5} {'typed':>5} {'untyp':>5} "
        f"{'ok/s':>6} {'tok/s':>7} {'lat50':>6} {'lat95':>6} {'ttft50':>6} {'ttft95':>6}"
    )
    print(phase_row("baseline: 1 client, no load", base, sum(o.latency for o in base)))
    phases = [
        ("load: before the kill", 0.0, chaos.killed_at),
        ("load: killed -> served again", chaos.killed_at, again),
        ("load: after", again, duration),
        ("load: whole run", 0.0, duration),
    ]
    for label, a, b in phases:
        print(phase_row(label, [o for o in outs if a <= o.started < b], b - a))
    print(
        f"(seconds; ok/s and tok/s: answers and their tokens per second of the phase; latency "
        f"of answers, TTFT of streamed answers; the node was killed at {chaos.killed_at:.0f} s, "
        f"answered /healthz again at {back:.0f} s and got a request through the gateway again "
        f"{through})"
    )


def report_outcomes(outs: list[Outcome], addresses: dict[str, str]) -> list[str]:
    """Outcome and receipt checks; returns the failed ones."""
    failed = []
    typed = Counter(o.code for o in outs if o.kind == "typed")
    untyped = [o for o in outs if o.kind == "untyped"]
    print(f"\n{len(outs)} requests: {sum(o.kind == 'ok' for o in outs)} answered, ", end="")
    print(f"{sum(typed.values())} typed errors, {len(untyped)} untyped failures")
    for code, n in typed.most_common():
        print(f"  typed  {n:5}  {code}")
    for why, n in Counter(f"{o.status} {o.code}" for o in untyped).most_common():
        print(f"  UNTYPED {n:4}  {why}")
    if untyped:
        failed.append(f"{len(untyped)} untyped failures")
    ok = [o for o in outs if o.kind == "ok"]
    names = {a.lower(): n for n, a in addresses.items()}
    checks = {
        "x-veil-receipt-id header": sum(bool(o.receipt_id) for o in ok),
        "x-veil-ticket-id header": sum(bool(o.ticket) for o in ok),
        "receipt names that ticket": sum(
            bool(o.ticket) and o.ticket == o.receipt_ticket for o in ok
        ),
        "receipt signed by x-veil-node": sum(
            o.receipt_signer is not None
            and o.receipt_signer.lower() in names
            and o.receipt_signer.lower() == (o.node or "").lower()
            for o in ok
        ),
    }
    whole = sum(not o.stream for o in ok)
    print(
        f"answers: {whole} whole, each with x-veil-receipt: verified; {len(ok) - whole} streamed, "
        "each ended with [DONE] after its receipt"
    )
    for what, n in checks.items():
        print(f"  {what:32} {n}/{len(ok)}")
        if n != len(ok):
            failed.append(f"{len(ok) - n} answers without {what}")
    return failed


def queue_file(path: Path) -> dict[str, dict[str, Any]]:
    """Winning tickets in a node's queue file: id -> recipient, queued_at, outcome."""
    entries: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return entries
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError):
            obj = json.loads(line)
            if obj["event"] == "won":
                t = PaymentTicket.from_header(obj["ticket"]).ticket
                entry = {"recipient": t.recipient, "queued_at": obj["queued_at"], "outcome": None}
                entries.setdefault(obj["ticket_id"], entry)
            elif obj["event"] == "done" and obj["ticket_id"] in entries:
                entries[obj["ticket_id"]]["outcome"] = obj.get("outcome")
    return entries


def log_counts(path: Path, start: int, end: int | None) -> Counter[str]:
    """Requests a node started and finished (by reason) between two offsets of its log."""
    with path.open("rb") as fh:
        fh.seek(start)
        text = fh.read(None if end is None else end - start).decode(errors="replace")
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if " veil.node: request " not in line:
            continue
        if " accepted: " in line:
            counts["started"] += 1
        elif " finished: reason=" in line:
            counts["finished " + line.split("reason=")[1].split()[0]] += 1
        elif " failed: " in line:
            counts["failed"] += 1
    return counts


async def wait_settled(net: LocalNetwork, client: httpx.AsyncClient, limit: float) -> None:
    """Until no node has a winning ticket pending redemption (at most `limit` s)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        pending = 0
        for url in net.node_urls.values():
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                pending += (await client.get(url + "/healthz", timeout=5)).json()["payments"][
                    "pending"
                ]
        if pending == 0:
            return
        await asyncio.sleep(2)


def report_billing(
    net: LocalNetwork, outs: list[Outcome], monitor: Monitor, chaos: Chaos, wallet: str
) -> list[str]:
    """Tickets accepted vs answers per node life; winning tickets vs answered requests."""
    failed: list[str] = []
    ok = [o for o in outs if o.kind == "ok"]
    print("\nbilling: tickets the nodes accepted vs answers the clients received (baseline too)")
    print(
        f"{'node (life)':22} {'refused':>7} {'accepted':>8} {'winners':>7} {'started':>7} "
        f"{'finished':>8} {'answers':>7} {'unanswered':>10}"
    )
    total_accepted = 0
    lives = sorted(monitor.health.items(), key=lambda kv: (kv[0][0], kv[0][1] != chaos.pid))
    for (name, pid), health in lives:
        pay = health.get("payments", {})
        path = net.nodes[name].log_path
        first_life = name == KILLED and pid == chaos.pid
        later_life = name == KILLED and pid != chaos.pid
        logs = log_counts(
            path, chaos.log_offset if later_life else 0, chaos.log_offset if first_life else None
        )
        addr = net.node_addresses[name].lower()
        mine = [o.started + o.latency for o in ok if (o.node or "").lower() == addr]
        if first_life:
            answers, life = sum(t < chaos.killed_at for t in mine), "killed"
        elif later_life:
            answers, life = sum(t >= chaos.killed_at for t in mine), "restarted"
        else:
            answers, life = len(mine), "whole run"
        finished = sum(n for k, n in logs.items() if k.startswith("finished"))
        accepted = max(pay.get("accepted", 0), logs["started"])  # see the note below
        total_accepted += accepted
        print(
            f"{name + ' (' + life + ')':22} {pay.get('refused', 0):7} {accepted:8} "
            f"{pay.get('winners', 0):7} {logs['started']:7} {finished:8} {answers:7} "
            f"{accepted - answers:10}"
        )
        extra = ", ".join(f"{k}: {n}" for k, n in sorted(logs.items()) if k != "started")
        print(f"{'':22} log: {extra or '-'}")
        if first_life:
            print(
                f"{'':22} in flight at the kill (started, not finished): "
                f"{logs['started'] - finished}; finished but not delivered: "
                f"{finished - answers}; accepted, never started: {accepted - logs['started']}"
            )
        elif accepted != answers:
            failed.append(f"{name} ({life}) accepted {accepted} tickets for {answers} answers")
    print(
        "  refused/accepted/winners: the node's /healthz payment counters (refused: 402s "
        "and payment 503s, which the gateway may retry or fail over), polled every few seconds "
        "and just before the kill (a ticket accepted after that last poll shows in the log: "
        "accepted = the larger); started/finished: requests its log shows begun and ended; "
        "answers: 200s with a verified receipt from that node"
    )

    # winning tickets: on chain (redeemed) and in the queues (redeemed or still pending)
    chain = ChainClient(Deployment.load(net.deployment_path))
    redeemed = {"0x" + r.ticket_hash.hex(): r for r in chain.redeemed_tickets(sender=wallet)}
    queued: dict[str, dict[str, Any]] = {}
    for name in net.node_names:
        queued.update(queue_file(net.data_dir / name / "tickets.jsonl"))
    charged = set(redeemed) | {t for t, e in queued.items() if e["outcome"] != "failed"}
    answered = {o.ticket for o in ok if o.ticket}
    store = ReceiptStore.open(net.data_dir / "receipts.sqlite")
    try:
        gateway_answered = {"0x" + s.receipt.ticket_id.hex() for s in store.receipts(limit=10**7)}
    finally:
        store.close()
    erred = {o.ticket: o for o in outs if o.kind != "ok" and o.ticket}
    pending = [t for t in charged if t not in redeemed]
    face = sum(r.face_value for r in redeemed.values())
    price = sum(
        int(h["payments"]["price"]) for h in monitor.health.values() if "payments" in h
    ) / max(1, len(monitor.health))
    print(
        f"\nwinning tickets: {len(charged)} ({len(redeemed)} redeemed on chain for "
        f"{face / TOKEN:g} VEIL, {len(pending)} still pending in the queues); expected "
        f"value of the {total_accepted} accepted tickets: {total_accepted * price / TOKEN:g} VEIL"
    )
    print(
        f"{len(ok)} answers carried a ticket id; {len(gateway_answered)} receipts in the "
        f"gateway's store"
    )
    unanswered = sorted(charged - answered)
    print(f"winning tickets of answered requests: {len(charged) - len(unanswered)}")
    print(f"winning tickets without an answer:    {len(unanswered)}")
    killed_addr = net.node_addresses[KILLED].lower()
    for t in unanswered:
        entry = queued.get(t, {})
        recipient = (entry.get("recipient") or redeemed[t].recipient).lower()
        node = next((n for n, a in net.node_addresses.items() if a.lower() == recipient), "?")
        seen = erred.get(t)
        what = (
            f"a request that ended in {seen.code} at {seen.started + seen.latency:.1f} s"
            if seen
            else "no client saw this ticket: an attempt the gateway failed over from"
        )
        queued_at = entry.get("queued_at", 0)
        at_kill = recipient == killed_addr and queued_at <= chaos.killed_wall + 1
        at_kill = at_kill and t not in gateway_answered
        state = "redeemed on chain" if t in redeemed else "pending"
        print(
            f"  {t[:18]}... {node}, {state}: {what}"
            + (" (in flight at the kill)" if at_kill else "")
        )
        if not at_kill:
            failed.append(f"winning ticket {t} charged without an answer")
    refused_paid = [t for t in erred if t in charged and erred[t].status != 200]
    if refused_paid:
        failed.append(f"{len(refused_paid)} requests refused before an answer were charged")
    print(f"tickets of requests refused before an answer that won: {len(refused_paid)}")
    return failed


def report_memory(monitor: Monitor, chaos: Chaos) -> list[str]:
    """RSS per process life: every minute, the slope after warm-up, and the verdict."""
    failed = []
    print(
        "\nmemory: RSS in MB, sampled every few seconds. Flat = the least-squares growth over "
        "the life after its first third (warm-up; for the restarted node, counted from when it "
        "serves) is under 5 % of its mean RSS there."
    )
    print(
        f"{'process':18} {'n':>4} {'peak':>6} {'MB/min':>7} {'growth':>7} {'verdict':8} "
        "RSS at 0, 60, 120 ... s of its samples"
    )
    for (name, pid), series in monitor.rss.items():
        life = " (killed)" if pid == chaos.pid else (" (restart)" if name == KILLED else "")
        if life == " (restart)":
            series = [(t, m) for t, m in series if t >= (chaos.back_at or 0.0)]
        rest = series[len(series) // 3 :]
        if len(rest) < 3:
            print(f"{name + life:18} {len(series):4}  too few samples once serving")
            continue
        ts, ms = [t for t, _ in rest], [m for _, m in rest]
        mean_t, mean_m = statistics.fmean(ts), statistics.fmean(ms)
        var = sum((t - mean_t) ** 2 for t in ts)
        slope = sum((t - mean_t) * (m - mean_m) for t, m in rest) / var if var else 0.0
        growth = slope * (ts[-1] - ts[0])
        flat = growth < 0.05 * mean_m
        verdict = "flat" if flat else "GROWING"
        if name == "anvil":  # the devnet keeps every block and receipt: it grows by design
            verdict = "(chain)"
        elif not flat:
            failed.append(f"{name}{life} memory grows {slope * 60:.1f} MB/min")
        marks, shown = [], series[0][0] - 60
        for t, m in series:
            if t >= shown + 60:
                marks.append(f"{m:.0f}")
                shown = t
        marks.append(f"end {series[-1][1]:.0f}")
        peak = max(m for _, m in series)
        print(
            f"{name + life:18} {len(series):4} {peak:6.0f} {slope * 60:7.2f} {growth:7.1f} "
            f"{verdict:8} {' '.join(marks)}"
        )
    return failed


# ---------------------------------------------------------------- main


async def load(net: LocalNetwork, args: argparse.Namespace) -> list[str]:
    url = net.gateway_url + CHAT_PATH
    limits = httpx.Limits(max_connections=args.clients + 16, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10), limits=limits) as client:
        base_t0 = time.monotonic()
        rng = random.Random(-1)
        base = [
            await request(client, url, -1, n, rng, base_t0, args.request_timeout) for n in range(6)
        ]
        t0 = time.monotonic()
        for o in base:  # started before the load: negative times
            o.started -= t0 - base_t0
        monitor = Monitor(net, t0)
        sampler = asyncio.create_task(monitor.run(client, args.sample_every))
        print(f"load: {args.clients} clients for {args.duration:.0f} s", flush=True)
        chaos_task = asyncio.create_task(
            kill_and_restart(
                net.nodes[KILLED],
                net.node_urls[KILLED],
                monitor,
                client,
                args.kill_at,
                args.restart_after,
            )
        )
        results: list[Outcome] = []
        clients = [
            client_loop(client, url, i, t0, args.duration, args.request_timeout, results)
            for i in range(args.clients)
        ]
        progress = asyncio.create_task(_progress(results, t0))
        await asyncio.gather(*clients)
        chaos = await chaos_task
        for task in (progress, sampler):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        monitor.sample()
        print(f"load done at {time.monotonic() - t0:.0f} s; waiting for redemptions", flush=True)
        await wait_settled(net, client, 60.0)
        await monitor.poll_health(client)
    addr = {a.lower(): "killed" for n, a in net.node_addresses.items() if n == KILLED}
    view = [_relabel(o, addr) for o in results]
    report_phases(base, view, chaos, args.duration)
    failed = [f"baseline: {o.code}" for o in base if o.kind != "ok"]
    with (net.data_dir / "load-outcomes.jsonl").open("w") as fh:
        fh.writelines(json.dumps(vars(o)) + "\n" for o in base + results)
    (net.data_dir / "load-monitor.json").write_text(
        json.dumps(
            {
                "chaos": vars(chaos),
                "health": {f"{n}/{p}": h for (n, p), h in monitor.health.items()},
                "rss": {f"{n}/{p}": v for (n, p), v in monitor.rss.items()},
            }
        )
    )
    failed += report_outcomes(results, net.node_addresses)
    wallet = str(load_keystore(net.wallet_path).address)
    failed += report_billing(net, base + results, monitor, chaos, wallet)
    failed += report_memory(monitor, chaos)
    report_logs(net)
    return failed


def report_logs(net: LocalNetwork) -> None:
    """ERROR lines and tracebacks in the services' logs (printed; the checks above decide)."""
    print("\nservice logs:", end="")
    for path in sorted((net.data_dir / "logs").glob("*.log")):
        text = path.read_text(errors="replace")
        errors, tracebacks = text.count(" ERROR "), text.count("Traceback")
        print(f"  {path.stem} {errors} ERROR, {tracebacks} tracebacks;", end="")
    print()


def _relabel(o: Outcome, killed: dict[str, str]) -> Outcome:
    """A copy whose node is "killed" when the killed node answered it (for the phases)."""
    copy = Outcome(**vars(o))
    copy.node = killed.get((o.node or "").lower(), o.node)
    return copy


async def _progress(results: list[Outcome], t0: float) -> None:
    while True:
        await asyncio.sleep(30)
        kinds = Counter(o.kind for o in results)
        print(
            f"[{time.monotonic() - t0:6.1f} s] {len(results)} requests: "
            + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    parser.add_argument("--kill-at", type=float, help="second to kill node-a (default: half)")
    parser.add_argument("--data-dir", type=Path, help="a new directory for the network (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument("--request-timeout", type=float, default=180.0, help="a hang, in s")
    parser.add_argument(
        "--restart-after", type=float, default=5.0, help="restart the node if still down after"
    )
    parser.add_argument("--sample-every", type=float, default=3.0, help="RSS sampling, in s")
    parser.add_argument("--win-prob", type=float, default=0.1, help="ticket win probability")
    args = parser.parse_args()
    if args.kill_at is None:
        args.kill_at = args.duration / 2
    if not 0 <= args.kill_at < args.duration:
        parser.error("--kill-at must fall within the run")

    if args.data_dir is not None and args.data_dir.exists() and any(args.data_dir.iterdir()):
        parser.error(f"{args.data_dir} is not empty: the billing check needs a fresh network")
    data = args.data_dir or Path(tempfile.mkdtemp(prefix="veil-load-"))
    settings = NetworkConfig(
        chain_port=0,
        node_ports=(0, 0),
        relay_port=0,
        gateway_port=0,
        win_prob=args.win_prob,
        face_value=int(TOKEN * 0.1 / args.win_prob),  # 0.1 VEIL per request on average
    )
    net = LocalNetwork(data, settings)
    failed: list[str] = []
    try:
        net.start(Console(stderr=True))
        failed = asyncio.run(load(net, args))
    finally:
        net.stop()
        if args.data_dir is None and not args.keep:
            shutil.rmtree(data, ignore_errors=True)
        else:
            print(f"data directory kept: {data}")
    print("\nPASS: every check held" if not failed else "\nFAIL:\n  " + "\n  ".join(failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
