"""The node's registration and ticket redemption against real contracts on an anvil devnet."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import replace

import pytest

from veil.chain import ChainClient, Devnet, ModelEntry, deploy
from veil.chain.deployment import TOKEN, Deployment
from veil.chain.errors import ChainUnavailable
from veil.chain.payment import PaymentTicket
from veil.chain.tickets import new_recipient_rand, recipient_rand_hash
from veil.identity import NodeIdentity
from veil.node.config import NodeConfig
from veil.node.errors import NodeSetupError
from veil.node.keys import NodeKeys
from veil.node.onchain import devnet_top_up, ensure_registered
from veil.node.payments import Redeemer, TicketQueue, WinningTicket, open_payments

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = ModelEntry("smollm2-135m-instruct", b"\x33" * 32)


@pytest.fixture(scope="module")
def devnet():  # type: ignore[no-untyped-def]
    with Devnet() as d:
        yield d


@pytest.fixture(scope="module")
def deployment_path(devnet, tmp_path_factory):  # type: ignore[no-untyped-def]
    mint = {a.address: 1_000 * TOKEN for a in devnet.accounts[1:4]}
    dep = deploy(devnet.rpc_url, devnet.accounts[0].private_key, mint=mint)
    return dep.save(tmp_path_factory.mktemp("chain") / "deployment.json")


@pytest.fixture(scope="module")
def node_identity() -> NodeIdentity:
    return NodeIdentity.generate()


@pytest.fixture(scope="module")
def node_client(deployment_path, node_identity) -> ChainClient:  # type: ignore[no-untyped-def]
    return ChainClient(Deployment.load(deployment_path), node_identity.private_key)


def register(client: ChainClient, **kw: object):  # type: ignore[no-untyped-def]
    args = {
        "endpoint": "http://127.0.0.1:8700",
        "ohttp_keys": NodeKeys.generate().encoded_configs(),
        "evidence_data": b"dev evidence",
        "models": [MODEL],
    } | kw
    return ensure_registered(client, **args)  # type: ignore[arg-type]


def test_registration(node_client: ChainClient) -> None:
    assert devnet_top_up(node_client, 200 * TOKEN)  # a fresh account: gas and VEIL
    keys = NodeKeys.generate().encoded_configs()
    said: list[str] = []
    first = register(node_client, ohttp_keys=keys, progress=said.append)
    min_stake = node_client.min_stake()
    assert first.registered_now and first.stake == min_stake and len(first.transactions) == 2
    assert "registered node" in said[0] and first.transactions[0][1] in said[0]
    assert "earnings account" in said[1]  # so its first winning ticket costs steady-state gas
    assert node_client.earnings_open() and node_client.earnings() == 0
    info = node_client.get_node(node_client.address)
    assert info.active and info.stake == min_stake and info.models == (MODEL,)
    assert info.ohttp_keys_hash == hashlib.sha256(keys).digest()
    assert info.attestation_digest == hashlib.sha256(b"dev evidence").digest()

    again = register(node_client)  # other keys now: the registered hash is not chased
    assert not again.registered_now and again.transactions == ()

    moved = register(node_client, endpoint="http://node.example:9000", stake=min_stake + 50 * TOKEN)
    assert [what.split(" ")[0] for what, _tx in moved.transactions] == ["updated", "added"]
    info = node_client.get_node(node_client.address)
    assert info.endpoint == "http://node.example:9000" and info.stake == min_stake + 50 * TOKEN


def test_the_token_key_is_committed_once_per_key_and_at_most_hourly(
    node_client: ChainClient,
) -> None:
    """After `test_registration`: the keyring's current key goes on chain once; a new epoch's
    key within the hour is refused by the registry with its reason, and kept for later."""
    from veil.chain.errors import ChainError
    from veil.node.credits import TokenKeyring
    from veil.node.credits.commit import commit_token_key

    now = [time.time()]
    keyring = TokenKeyring(None, epoch_s=3600, grace_s=600, clock=lambda: now[0])
    address = node_client.address
    assert commit_token_key(keyring, node_client, address)
    first = keyring.current().key_id
    assert node_client.token_keys(address).current == first
    assert not commit_token_key(keyring, node_client, address)  # already there: nothing sent
    now[0] += 3600  # the next epoch's key, but the chain's clock has not moved an hour
    with pytest.raises(ChainError, match="token key changed too recently"):
        commit_token_key(keyring, node_client, address)
    keys = node_client.token_keys(address)
    assert keys.current == first and keys.names(first)


def test_registration_without_veil_names_the_problem(deployment_path) -> None:  # type: ignore[no-untyped-def]
    poor = ChainClient(Deployment.load(deployment_path), NodeIdentity.generate().private_key)
    devnet_top_up(poor, 0)  # gas only
    with pytest.raises(NodeSetupError, match="holds 0 VEIL; registering with a stake"):
        register(poor)


class LossyChain:
    """The node's chain client, but the first redemption's answer is lost and then the RPC
    endpoint is down: what a crash or outage mid-redemption looks like to the redeemer."""

    def __init__(self, real: ChainClient) -> None:
        self.real, self.calls = real, 0

    def redeem_ticket(self, ticket, signature, rand):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == 1:
            self.real.redeem_ticket(ticket, signature, rand)  # mined, but we never hear back
        raise ChainUnavailable("cannot reach the chain RPC endpoint")

    def earnings(self, recipient=None) -> int:  # type: ignore[no-untyped-def]
        raise ChainUnavailable("cannot reach the chain RPC endpoint")

    def withdraw_earnings(self):  # type: ignore[no-untyped-def]
        raise ChainUnavailable("cannot reach the chain RPC endpoint")


def test_paid_tickets_are_redeemed_and_withdrawn(
    devnet, deployment_path, node_identity, node_client, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    if not node_client.get_node(node_client.address).registered:
        devnet_top_up(node_client, 200 * TOKEN)
        register(node_client)
    queue_path = tmp_path / "tickets.jsonl"
    config = NodeConfig(
        deployment_path=str(deployment_path),
        ticket_win_prob=1.0,
        tickets_path=str(queue_path),
        redeem_interval_s=0.01,
    )
    payments = open_payments(config, node_identity)
    dep = Deployment.load(deployment_path)
    sender = ChainClient(dep, devnet.accounts[2].private_key)
    sender.fund_deposit(5 * TOKEN)
    broke = ChainClient(dep, devnet.accounts[3].private_key)  # no deposit at the broker
    desk = payments.desk
    domain = desk.domain

    async def pay(nonce: int) -> PaymentTicket:
        params = desk.params()  # every win retires the rand: fetch the new params each time
        paid = PaymentTicket.sign(
            params.ticket(sender.address, nonce, int(time.time()) + 3600),
            domain,
            devnet.accounts[2].private_key,
        )
        accepted = await desk.check(paid.header_value())
        assert accepted is not None and accepted.winning
        await payments.answered(accepted)  # its answer went out: now it may be redeemed
        return paid

    paid = [asyncio.run(pay(n)) for n in (1, 2, 3)]
    assert len(payments.queue) == 3
    # a winner the broker will refuse for good: its sender has no funds there
    rand = new_recipient_rand()
    params = replace(desk.params(), recipient_rand_hash=recipient_rand_hash(rand))
    doomed = PaymentTicket.sign(
        params.ticket(broke.address, 1, int(time.time()) + 3600),
        domain,
        devnet.accounts[3].private_key,
    )
    payments.queue.reserve(WinningTicket(doomed, rand, doomed.ticket_id(domain), 0))
    payments.queue.save(WinningTicket(doomed, rand, doomed.ticket_id(domain), 0))
    payments.queue.answered(doomed.ticket_id(domain))

    balance = node_client.token_balance()
    deposit = sender.sender_funds().deposit

    lossy = Redeemer(TicketQueue(queue_path), LossyChain(payments.client), interval_s=0.01)
    assert lossy.run_once() == 0  # nothing settled: one mined unseen, the rest unreachable
    assert node_client.is_ticket_redeemed(paid[0].ticket)

    # restart: a new queue from the file, the real client
    queue = TicketQueue(queue_path)
    assert len(queue) == 4
    redeemer = Redeemer(queue, payments.client, interval_s=0.01)
    redeemer.start()
    try:
        deadline = time.monotonic() + 60
        while len(queue) or node_client.earnings():
            assert time.monotonic() < deadline, "redeemer did not finish"
            time.sleep(0.05)
    finally:
        redeemer.stop()
    assert all(node_client.is_ticket_redeemed(p.ticket) for p in paid)
    assert not node_client.is_ticket_redeemed(doomed.ticket)
    assert node_client.token_balance() == balance + 3 * TOKEN
    assert sender.sender_funds().deposit == deposit - 3 * TOKEN
    stats = redeemer.stats.snapshot()
    assert (stats["redeemed"], stats["failed"]) == (3, 1)  # the first found already redeemed
    assert stats["redeemed_face_value"] == 3 * TOKEN and stats["withdrawn"] == 3 * TOKEN
    assert TicketQueue(queue_path).pending() == []


def test_a_redemption_lost_with_its_block_is_redeemed_again_once(
    devnet, deployment_path, node_identity, node_client, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """anvil persists its state every few seconds: a chain crash can drop the block holding a
    redemption the node's queue already calls done. Reverting to a snapshot is that crash."""
    if not node_client.get_node(node_client.address).registered:
        devnet_top_up(node_client, 200 * TOKEN)
        register(node_client)
    queue_path = tmp_path / "tickets.jsonl"
    config = NodeConfig(
        deployment_path=str(deployment_path),
        ticket_win_prob=1.0,
        tickets_path=str(queue_path),
        auto_withdraw=False,
    )
    payments = open_payments(config, node_identity)
    dep = Deployment.load(deployment_path)
    sender = ChainClient(dep, devnet.accounts[2].private_key)
    sender.fund_deposit(2 * TOKEN)
    desk = payments.desk
    paid = PaymentTicket.sign(
        desk.params().ticket(sender.address, 100, int(time.time()) + 3600),
        desk.domain,
        devnet.accounts[2].private_key,
    )
    accepted = asyncio.run(desk.check(paid.header_value()))
    assert accepted is not None
    asyncio.run(payments.answered(accepted))
    deposit, earned = sender.sender_funds().deposit, node_client.earnings()

    snapshot = devnet.rpc("evm_snapshot")  # the chain's last persisted state
    redeemer = payments.redeemer
    assert redeemer is not None and redeemer.run_once() == 1
    assert node_client.is_ticket_redeemed(paid.ticket) and payments.queue.pending() == []
    assert devnet.rpc("evm_revert", snapshot)  # the crash: the redemption's block is gone
    assert not node_client.is_ticket_redeemed(paid.ticket)

    # the node restarts: its queue says done, its first pass checks that against the chain
    queue = TicketQueue(queue_path)
    assert queue.pending() == [] and [w.ticket_id for w in queue.settled()] == [
        paid.ticket_id(desk.domain)
    ]
    again = Redeemer(queue, payments.client, auto_withdraw=False)
    assert again.run_once() == 1 and again.stats.snapshot()["requeued"] == 1
    assert node_client.is_ticket_redeemed(paid.ticket)
    assert sender.sender_funds().deposit == deposit - TOKEN  # paid exactly once
    assert node_client.earnings() == earned + TOKEN
    assert again.reconcile() == 0 and again.run_once() == 0  # nothing more to do
    assert node_client.earnings() == earned + TOKEN
