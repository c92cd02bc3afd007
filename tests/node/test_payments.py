"""The node's ticket desk, winner queue and redeemer, without a chain (fakes for funds/chain)."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.payments import (
    DOMAIN,
    NOW,
    TOKEN,
    FakeFundsSource,
    FakeRedeemTarget,
    account,
    write_ticket,
)
from veil.chain.errors import (
    ChainUnavailable,
    SenderUnderfunded,
    TicketExpired,
    TicketReplayed,
    TransactionFailed,
)
from veil.chain.payment import TicketParams
from veil.chain.tickets import TicketDomain, win_prob_for
from veil.chain.types import SenderFunds
from veil.node.payments import (
    NodePayments,
    PaymentRefused,
    PaymentStats,
    Redeemer,
    TicketDesk,
    TicketQueue,
    WinningTicket,
    format_veil,
)

NODE = account(1)
SENDER = account(2)
OTHER = account(3)
NEVER = 1  # a win probability (of 2**256) that practically never wins
ALWAYS = win_prob_for(1.0)


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def funds() -> FakeFundsSource:
    return FakeFundsSource({SENDER.address: SenderFunds(10 * TOKEN, 0, 0)})


def make_desk(
    clock: Clock,
    funds: FakeFundsSource,
    queue: TicketQueue | None = None,
    *,
    win_prob: int = NEVER,
    **kw: object,
) -> TicketDesk:
    return TicketDesk(
        NODE.address,
        DOMAIN,
        funds,
        queue if queue is not None else TicketQueue(None),
        face_value=TOKEN,
        win_prob=win_prob,
        clock=clock,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def desk(clock: Clock, funds: FakeFundsSource) -> TicketDesk:
    return make_desk(clock, funds)


async def refused(desk: TicketDesk, header: str | None) -> PaymentRefused:
    with pytest.raises(PaymentRefused) as info:
        await desk.check(header)
    return info.value


async def code_of(desk: TicketDesk, header: str | None) -> str | None:
    err = await refused(desk, header)
    assert err.status == 402 and err.type == "payment_error", (err.code, err.message)
    return err.code


# ---------------------------------------------------------------------------- params


def test_params_name_the_node_chain_and_offer(desk: TicketDesk, clock: Clock) -> None:
    p = desk.params()
    assert (p.recipient, p.face_value, p.win_prob) == (NODE.address, TOKEN, NEVER)
    assert (p.chain_id, p.broker) == (DOMAIN.chain_id, DOMAIN.verifying_contract)
    assert p.expires_at == NOW + 3600
    assert desk.params() == p  # the same rand until it half-ages
    assert TicketParams.from_header(p.header_value()) == p
    clock.now += 1801
    assert desk.params().recipient_rand_hash != p.recipient_rand_hash


async def test_recent_rands_still_accepted_then_expire(desk: TicketDesk, clock: Clock) -> None:
    old = desk.params()
    clock.now += 1801
    assert desk.params() != old
    assert (await desk.check(write_ticket(old, SENDER, 1).header_value())) is not None
    clock.now = old.expires_at + 1
    header = write_ticket(old, SENDER, 2, expiry=int(clock.now) + 3600).header_value()
    assert await code_of(desk, header) == "ticket_params_stale"


# ---------------------------------------------------------------------------- decisions


async def test_accepts_a_valid_ticket(desk: TicketDesk) -> None:
    paid = write_ticket(desk.params(), SENDER, 7)
    accepted = await desk.check(paid.header_value())
    assert accepted is not None and not accepted.winning
    assert accepted.ticket_id == paid.ticket_id(DOMAIN)
    assert desk.stats.snapshot()["accepted"] == 1


async def test_no_ticket(desk: TicketDesk, clock: Clock, funds: FakeFundsSource) -> None:
    assert await code_of(desk, None) == "payment_required"
    free = make_desk(clock, funds, free=True)
    assert await free.check(None) is None
    assert free.stats.snapshot()["unpaid"] == 1
    bad = write_ticket(free.params(), SENDER, 1, expiry=NOW + 5)  # a sent ticket is checked
    assert await code_of(free, bad.header_value()) == "ticket_expired"


async def test_invalid_tickets(desk: TicketDesk) -> None:
    p = desk.params()
    assert await code_of(desk, "not a ticket") == "invalid_ticket"
    assert await code_of(desk, "") == "invalid_ticket"
    wrong_node = replace(p, recipient=OTHER.address)
    assert await code_of(desk, write_ticket(wrong_node, SENDER, 1).header_value()) == (
        "invalid_ticket"
    )
    other_broker = TicketDomain(DOMAIN.chain_id, "0x" + "c0" * 20)
    signed_elsewhere = write_ticket(p, SENDER, 2, domain=other_broker)
    err = await refused(desk, signed_elsewhere.header_value())
    assert err.code == "invalid_ticket" and "broker" in err.message
    other_chain = TicketDomain(1, DOMAIN.verifying_contract)
    assert await code_of(desk, write_ticket(p, SENDER, 3, domain=other_chain).header_value()) == (
        "invalid_ticket"
    )
    forged = write_ticket(p, OTHER, 4)  # signed by OTHER, claims SENDER
    forged = replace(forged, ticket=replace(forged.ticket, sender=SENDER.address))
    assert await code_of(desk, forged.header_value()) == "invalid_ticket"
    good = write_ticket(p, SENDER, 5)
    sig = good.signature
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = (n - int.from_bytes(sig[32:64], "big")).to_bytes(32, "big")
    malleable = sig[:32] + high_s + bytes([55 - sig[64]])  # the same signer, other draw
    err = await refused(desk, replace(good, signature=malleable).header_value())
    assert err.code == "invalid_ticket" and "low-s" in err.message
    assert desk.stats.snapshot()["refused"] == 7


async def test_stale_params(desk: TicketDesk) -> None:
    unknown = replace(desk.params(), recipient_rand_hash=b"\x42" * 32)
    err = await refused(desk, write_ticket(unknown, SENDER, 1).header_value())
    assert err.code == "ticket_params_stale" and "x-veil-ticket-params" in err.message


async def test_expiry_bounds(desk: TicketDesk) -> None:
    p = desk.params()
    for expiry in (NOW - 1, NOW + 599, NOW + 2 * 86_400 + 1):
        assert await code_of(desk, write_ticket(p, SENDER, expiry, expiry=expiry).header_value())
    assert await desk.check(write_ticket(p, SENDER, 1, expiry=NOW + 600).header_value())
    assert await desk.check(write_ticket(p, SENDER, 2, expiry=NOW + 2 * 86_400).header_value())
    err = await refused(desk, write_ticket(p, SENDER, 3, expiry=NOW + 10).header_value())
    assert err.code == "ticket_expired"


async def test_expected_value_must_meet_the_price(clock: Clock, funds: FakeFundsSource) -> None:
    desk = make_desk(clock, funds, win_prob=win_prob_for(0.1))
    p = desk.params()
    cheap = write_ticket(p, SENDER, 1, face_value=TOKEN // 2)
    err = await refused(desk, cheap.header_value())
    assert err.code == "insufficient_payment" and format_veil(desk.price) in err.message
    long_odds = write_ticket(p, SENDER, 2, win_prob=p.win_prob // 2)
    assert await code_of(desk, long_odds.header_value()) == "insufficient_payment"
    zero = write_ticket(p, SENDER, 3, face_value=0)
    assert await code_of(desk, zero.header_value()) == "insufficient_payment"
    same_value = write_ticket(p, SENDER, 4, face_value=2 * TOKEN, win_prob=p.win_prob // 2 + 1)
    assert await desk.check(same_value.header_value()) is not None


async def test_replay_is_per_rand_sender_and_nonce(
    desk: TicketDesk, funds: FakeFundsSource
) -> None:
    funds.funds[OTHER.address] = SenderFunds(5 * TOKEN, 0, 0)
    p = desk.params()
    first = write_ticket(p, SENDER, 9)
    assert await desk.check(first.header_value())
    assert await code_of(desk, first.header_value()) == "ticket_replayed"
    later = write_ticket(p, SENDER, 9, expiry=NOW + 7200)  # new signature, same nonce
    assert await code_of(desk, later.header_value()) == "ticket_replayed"
    assert await desk.check(write_ticket(p, OTHER, 9).header_value())  # another sender


async def test_sender_funds(desk: TicketDesk, funds: FakeFundsSource, clock: Clock) -> None:
    p = desk.params()
    poor = account(4)
    funds.funds[poor.address] = SenderFunds(TOKEN - 1, 0, 0)
    err = await refused(desk, write_ticket(p, poor, 1).header_value())
    assert err.code == "sender_unfunded" and "deposit + reserve" in err.message
    reserved = account(5)  # the reserve counts: the broker pays from it after the deposit
    funds.funds[reserved.address] = SenderFunds(TOKEN // 2, TOKEN // 2, 0)
    assert await desk.check(write_ticket(p, reserved, 1).header_value())
    leaving = account(6)
    funds.funds[leaving.address] = SenderFunds(100 * TOKEN, 0, NOW + 86_400)
    err = await refused(desk, write_ticket(p, leaving, 1).header_value())
    assert err.code == "sender_unfunded" and "unlocking" in err.message


async def test_funds_are_cached_briefly_and_an_outage_is_a_503(
    clock: Clock, funds: FakeFundsSource
) -> None:
    desk = make_desk(clock, funds, funds_ttl_s=1e9)
    p = desk.params()
    await desk.check(write_ticket(p, SENDER, 1).header_value())
    await desk.check(write_ticket(p, SENDER, 2).header_value())
    assert funds.calls == 1
    fresh = make_desk(clock, funds)
    funds.down = True
    err = await refused(fresh, write_ticket(fresh.params(), SENDER, 3).header_value())
    assert (err.status, err.type, err.code) == (503, "server_error", "chain_unavailable")
    assert fresh.stats.snapshot()["accepted"] == 0


async def test_a_win_is_queued_durably_and_the_rand_retires_when_revealed(
    tmp_path: Path, clock: Clock, funds: FakeFundsSource
) -> None:
    path = tmp_path / "q" / "tickets.jsonl"
    woken = []
    desk = make_desk(clock, funds, TicketQueue(path), win_prob=ALWAYS, on_winner=woken.append)
    p = desk.params()
    paid = write_ticket(p, SENDER, 1)
    accepted = await desk.check(paid.header_value())
    assert accepted is not None and accepted.winning
    assert path.stat().st_mode & 0o777 == 0o600
    (line,) = path.read_text().splitlines()
    stored = WinningTicket.from_json(json.loads(line))  # checks the rand against its hash
    assert stored.payment == paid and stored.ticket_id == accepted.ticket_id
    assert len(woken) == 1
    assert desk.params().recipient_rand_hash != p.recipient_rand_hash  # a new offer at once
    # still secret until redeemed: a ticket a concurrent request signed on it is good
    assert (await desk.check(write_ticket(p, SENDER, 2).header_value())) is not None
    desk.revealing(p.recipient_rand_hash)  # the redeemer is about to put it on chain
    err = await refused(desk, write_ticket(p, SENDER, 3).header_value())
    assert err.code == "ticket_params_stale"
    snap = desk.stats.snapshot()
    assert (snap["accepted"], snap["winners"]) == (2, 2)


async def test_unredeemed_winners_count_against_the_sender(clock: Clock) -> None:
    funds = FakeFundsSource({SENDER.address: SenderFunds(2 * TOKEN, 0, 0)})
    desk = make_desk(clock, funds, win_prob=ALWAYS, funds_ttl_s=1e9)
    assert (await desk.check(write_ticket(desk.params(), SENDER, 1).header_value())).winning
    assert (await desk.check(write_ticket(desk.params(), SENDER, 2).header_value())).winning
    err = await refused(desk, write_ticket(desk.params(), SENDER, 3).header_value())
    assert err.code == "sender_unfunded" and "owed" in err.message


async def test_concurrent_checks_never_double_accept(desk: TicketDesk) -> None:
    header = write_ticket(desk.params(), SENDER, 1).header_value()
    results = await asyncio.gather(*(desk.check(header) for _ in range(5)), return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert {r.code for r in results if isinstance(r, PaymentRefused)} == {"ticket_replayed"}


# ---------------------------------------------------------------------------- fuzzing

_fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fuzz
@given(header=st.text(max_size=3000))
def test_any_header_text_is_a_402(header: str) -> None:
    desk = make_desk(Clock(), FakeFundsSource())
    err = asyncio.run(refused(desk, header))
    assert err.status == 402 and err.type == "payment_error"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner),
    max_leaves=20,
)
_FIELDS = ("recipient", "sender", "face_value", "win_prob", "sender_nonce")


@_fuzz
@given(data=st.data())
def test_any_ticket_shaped_json_is_a_402(data: st.DataObject) -> None:
    desk = make_desk(Clock(), FakeFundsSource())
    ticket = {
        "recipient": NODE.address,
        "sender": SENDER.address,
        "face_value": str(TOKEN),
        "win_prob": "1",
        "sender_nonce": "1",
        "recipient_rand_hash": "0x" + desk.params().recipient_rand_hash.hex(),
        "expiry": NOW + 3600,
    }
    for name in data.draw(st.lists(st.sampled_from([*_FIELDS, "expiry", "extra"]), max_size=3)):
        ticket[name] = data.draw(_json)
    obj = {"ticket": ticket, "signature": data.draw(st.sampled_from(["0x" + "1b" * 65, 5]))}
    header = base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    err = asyncio.run(refused(desk, header))
    assert err.status == 402 and err.type == "payment_error"


# ---------------------------------------------------------------------------- queue


def winner(nonce: int, params: TicketParams, rand: int, sender=SENDER) -> WinningTicket:  # type: ignore[no-untyped-def]
    paid = write_ticket(params, sender, nonce)
    return WinningTicket(paid, rand, paid.ticket_id(DOMAIN), NOW)


@pytest.fixture
def rand_params() -> tuple[TicketParams, int]:
    from veil.chain.tickets import recipient_rand_hash

    rand = 12345
    params = TicketParams(
        NODE.address,
        TOKEN,
        ALWAYS,
        recipient_rand_hash(rand),
        NOW,
        31337,
        DOMAIN.verifying_contract,
    )
    return params, rand


def test_queue_survives_restarts_and_torn_lines(tmp_path: Path, rand_params) -> None:  # type: ignore[no-untyped-def]
    params, rand = rand_params
    path = tmp_path / "tickets.jsonl"
    q = TicketQueue(path, clock=lambda: NOW)
    a, b, c = (winner(n, params, rand) for n in (1, 2, 3))
    for w in (a, b, c):
        q.reserve(w)
        q.save(w)
        q.answered(w.ticket_id)
    q.settle(b.ticket_id, "redeemed")
    with path.open("a") as fh:
        fh.write('{"event": "won", "ticket_id": "0x12')  # a crash mid-write
    again = TicketQueue(path, clock=lambda: NOW)
    assert [w.ticket_id for w in again.pending()] == [a.ticket_id, c.ticket_id]
    assert again.settled() == [b]  # kept to check against the chain
    assert len(path.read_text().splitlines()) == 4  # compacted on open: a, c, b won + done
    assert again.pending_face_value(SENDER.address) == 2 * TOKEN
    assert again.pending_face_value(OTHER.address) == 0


def test_unsaved_winners_are_invisible_to_the_redeemer(tmp_path: Path, rand_params) -> None:  # type: ignore[no-untyped-def]
    params, rand = rand_params
    q = TicketQueue(tmp_path / "t.jsonl")
    w = winner(1, params, rand)
    q.reserve(w)
    assert q.pending() == [] and q.pending_face_value(SENDER.address) == TOKEN
    q.save(w)
    assert q.pending() == []  # saved, awaiting its request's answer
    q.answered(w.ticket_id)
    assert q.pending() == [w]


def test_redeemed_tickets_are_kept_until_they_expire_at_most_keep_settled(
    tmp_path: Path,
    rand_params,  # type: ignore[no-untyped-def]
) -> None:
    params, rand = rand_params
    path = tmp_path / "t.jsonl"
    now = [float(NOW)]
    q = TicketQueue(path, keep_settled=2, clock=lambda: now[0])
    ws = [winner(n, params, rand) for n in (1, 2, 3, 4)]
    for w in ws:
        q.reserve(w)
        q.save(w)
        q.answered(w.ticket_id)
    q.settle(ws[0].ticket_id, "redeemed")
    q.settle(ws[1].ticket_id, "failed", "sender underfunded")  # a refusal is not kept
    q.settle(ws[2].ticket_id, "redeemed")
    q.settle(ws[3].ticket_id, "redeemed")
    assert q.settled() == [ws[2], ws[3]]  # the newest two
    assert TicketQueue(path, keep_settled=2, clock=lambda: now[0]).settled() == [ws[2], ws[3]]
    now[0] = NOW + 3600  # their expiry: the broker refuses them now, nothing to reconcile
    assert q.settled() == []
    assert TicketQueue(path, clock=lambda: now[0]).settled() == []
    assert path.read_text() == ""  # compacted away
    assert path.stat().st_mode & 0o777 == 0o600


def test_reconcile_redeems_again_what_the_chain_lost_exactly_once(
    tmp_path: Path,
    rand_params,  # type: ignore[no-untyped-def]
    caplog,  # type: ignore[no-untyped-def]
) -> None:
    params, rand = rand_params
    path = tmp_path / "t.jsonl"
    q = TicketQueue(path, clock=lambda: NOW)
    a, b = winner(1, params, rand), winner(2, params, rand)
    for w in (a, b):
        q.reserve(w)
        q.save(w)
        q.answered(w.ticket_id)
    chain = FakeRedeemTarget({})
    clock = Clock()
    stats = PaymentStats()
    r = Redeemer(q, chain, stats, interval_s=1.0, reconcile_interval_s=60.0, clock=clock)
    assert r.run_once() == 2 and chain.redeemed == [1, 2]
    chain.used.discard(a.ticket_id)  # the block with a's redemption is lost (chain crash)
    chain.earned -= TOKEN
    assert r.run_once() == 0  # reconciling is not due yet
    clock.now += 60
    assert r.run_once() == 1  # due: a is found unused, queued again and redeemed
    assert chain.redeemed == [1, 2, 1] and a.ticket_id in chain.used
    assert "does not hold the redemption" in caplog.text
    assert stats.snapshot()["requeued"] == 1
    assert r.reconcile() == 0 and chain.redeemed == [1, 2, 1]  # once only
    # a restart reconciles at once, from the kept tickets in the file
    chain.used.discard(b.ticket_id)
    r2 = Redeemer(TicketQueue(path, clock=lambda: NOW), chain, interval_s=1.0, clock=clock)
    assert r2.run_once() == 1 and chain.redeemed == [1, 2, 1, 2]
    # a chain outage while reconciling: tried again after interval_s, not a full period
    chain.used.discard(b.ticket_id)
    chain.down = True
    clock.now += 60
    assert r2.run_once() == 0 and "reconciling ticket" in caplog.text
    chain.down = False
    clock.now += 1.0
    assert r2.run_once() == 1 and chain.redeemed == [1, 2, 1, 2, 2]


# ---------------------------------------------------------------------------- redeemer


def test_redeemer_outcomes(tmp_path: Path, rand_params, caplog) -> None:  # type: ignore[no-untyped-def]
    params, rand = rand_params
    path = tmp_path / "t.jsonl"
    q = TicketQueue(path)
    winners = [winner(n, params, rand) for n in (1, 2, 3, 4, 5)]
    for w in winners:
        q.reserve(w)
        q.save(w)
        q.answered(w.ticket_id)
    chain = FakeRedeemTarget(
        {
            2: [TicketReplayed("ticket already redeemed")],
            3: [TicketExpired("ticket expired")],
            4: [ChainUnavailable("down"), TransactionFailed("nonce too low")],
            5: [SenderUnderfunded("sender underfunded")],
        }
    )
    clock = Clock()
    stats = PaymentStats()
    revealed: list[bytes] = []
    r = Redeemer(
        q,
        chain,
        stats,
        interval_s=1.0,
        withdraw_interval_s=2.0,
        on_reveal=revealed.append,
        clock=clock,
    )
    assert r.run_once() == 4  # 1 redeemed, 2 already redeemed, 3 and 5 dropped; 4 waits
    assert revealed[0] == params.recipient_rand_hash  # the desk hears before the chain does
    assert "dropping winning ticket" in caplog.text and "ticket expired" in caplog.text
    assert chain.withdrawals == 1
    assert r.run_once() == 0  # 4 is backing off
    clock.now += 1.0
    assert r.run_once() == 0  # second transient failure: backoff doubles
    clock.now += 1.5
    assert r.run_once() == 0
    clock.now += 1.0
    assert r.run_once() == 1
    assert chain.withdrawals == 2  # due again, and the last one was 3.5 s ago
    snap = stats.snapshot()
    assert (snap["redeemed"], snap["failed"]) == (3, 2)
    assert snap["redeemed_face_value"] == 3 * TOKEN  # 1, 2 (found already redeemed), 4
    assert snap["withdrawn"] == 2 * TOKEN  # what the fake credited: tickets 1 and 4
    assert len(q) == 0 and TicketQueue(path).pending() == []


def test_redeemer_thread_resumes_pending_and_stops(tmp_path: Path, rand_params) -> None:  # type: ignore[no-untyped-def]
    params, rand = rand_params
    path = tmp_path / "t.jsonl"
    q = TicketQueue(path)
    for n in (1, 2):
        w = winner(n, params, rand)
        q.reserve(w)
        q.save(w)
        q.answered(w.ticket_id)
    chain = FakeRedeemTarget({})
    r = Redeemer(TicketQueue(path), chain, interval_s=0.05)  # a restart: read from the file
    r.start()
    try:
        import time

        deadline = time.monotonic() + 10
        while len(chain.redeemed) < 2 or chain.withdrawals < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        r.stop()
    assert sorted(chain.redeemed) == [1, 2] and TicketQueue(path).pending() == []


async def test_node_payments_health_and_wakeup(tmp_path: Path, clock: Clock, funds) -> None:  # type: ignore[no-untyped-def]
    queue = TicketQueue(tmp_path / "t.jsonl")
    desk = make_desk(clock, funds, queue, win_prob=ALWAYS)
    chain = FakeRedeemTarget({})
    payments = NodePayments(desk, Redeemer(queue, chain, desk.stats, interval_s=60))
    accepted = await payments.check(write_ticket(desk.params(), SENDER, 1).header_value())
    assert accepted
    payments.redeemer.run_once()  # not redeemable before its answer went out
    assert payments.health()["redeemed"] == 0
    await payments.answered(accepted)
    health = payments.health()
    assert {k: health[k] for k in ("accepted", "winners", "pending", "redeemed")} == {
        "accepted": 1,
        "winners": 1,
        "pending": 1,
        "redeemed": 0,
    }
    payments.redeemer.run_once()
    health = payments.health()
    assert (health["pending"], health["redeemed"], health["redeemed_face_value"]) == (
        0,
        1,
        str(TOKEN),
    )
    assert "x-veil-ticket-params" in payments.params_header()


def test_a_config_naming_a_deployment_never_serves_unpaid_by_accident(tmp_path: Path) -> None:
    from veil.identity import NodeIdentity
    from veil.node.api import create_app
    from veil.node.config import NodeConfig
    from veil.node.errors import NodeSetupError

    config = NodeConfig(deployment_path=str(tmp_path / "absent.json"))
    with pytest.raises(NodeSetupError, match="veil chain up"):  # before the engine is touched
        create_app(None, config, identity=NodeIdentity.generate())  # type: ignore[arg-type]
