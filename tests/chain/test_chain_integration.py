"""End to end on a real anvil devnet, through `veil.chain` only (what node/client/validator use)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from veil.chain import (
    ChainClient,
    ChainReleases,
    ChallengeStatus,
    Devnet,
    ModelEntry,
    Ticket,
    deploy,
    new_recipient_rand,
    recipient_rand_hash,
    win_prob_for,
)
from veil.chain.deployment import TOKEN, ChainParams, Deployment
from veil.chain.errors import (
    AlreadyVoted,
    ChainError,
    DeploymentError,
    InsufficientFunds,
    TicketExpired,
    TicketReplayed,
    TooEarly,
    Unauthorized,
    WrongTicketRecipient,
)

pytestmark = pytest.mark.integration

PARAMS = ChainParams()
MODEL = ModelEntry("SmolLM2-135M-Instruct", b"\x33" * 32)
MEASUREMENT = b"\x44" * 32


@pytest.fixture(scope="module")
def devnet():
    with Devnet() as d:
        yield d


@pytest.fixture(scope="module")
def deployment(devnet, tmp_path_factory) -> Deployment:
    mint = {a.address: 10_000 * TOKEN for a in devnet.accounts[1:7]}
    dep = deploy(devnet.rpc_url, devnet.accounts[0].private_key, params=PARAMS, mint=mint)
    path = dep.save(tmp_path_factory.mktemp("chain") / "deployment.json")
    return Deployment.load(path)  # what other commands see: the file round trip


@pytest.fixture(scope="module")
def actors(devnet, deployment):
    keys = [a.private_key for a in devnet.accounts]
    return {
        "gov": ChainClient(deployment, keys[0]),
        "node": ChainClient(deployment, keys[1]),
        "client": ChainClient(deployment, keys[2]),
        "v1": ChainClient(deployment, keys[3]),
        "v2": ChainClient(deployment, keys[4]),
        "other_node": ChainClient(deployment, keys[5]),
        "reader": ChainClient(deployment),
    }


def make_ticket(client: ChainClient, recipient: str, rand: int, nonce: int, **over) -> Ticket:
    fields = {
        "recipient": recipient,
        "sender": client.address,
        "face_value": TOKEN,
        "win_prob": win_prob_for(1.0),
        "sender_nonce": nonce,
        "recipient_rand_hash": recipient_rand_hash(rand),
        "expiry": client.chain_time() + 3600,
    } | over
    return Ticket(**fields)


def test_register_fund_redeem_challenge_slash(devnet, deployment, actors) -> None:
    node, client, v1, v2 = actors["node"], actors["client"], actors["v1"], actors["v2"]
    gov, reader = actors["gov"], actors["reader"]

    # releases: governance approves the model + node software measurement
    index = gov.publish_release(MODEL.weights_hash, MEASUREMENT, "smollm2 / node 0.1")
    assert reader.is_release_approved(MODEL.weights_hash, MEASUREMENT)
    with pytest.raises(Unauthorized):
        node.publish_release(b"\x01" * 32, b"\x02" * 32)
    assert reader.releases()[index].note == "smollm2 / node 0.1"
    source = ChainReleases(reader)  # what client policy consults
    assert source.is_approved(MODEL.weights_hash, MEASUREMENT)
    assert not source.is_approved(MODEL.weights_hash, b"\x45" * 32)
    assert not source.is_approved(MODEL.weights_hash, b"\x44" * 65)  # cannot be on chain

    # register: a node stakes and becomes discoverable
    node.register_node("https://node-1.example", b"\x11" * 32, b"\x22" * 32, [MODEL], 500 * TOKEN)
    actives = reader.active_nodes()
    assert [n.operator for n in actives] == [node.address]
    assert actives[0].models == (MODEL,) and actives[0].stake == 500 * TOKEN
    node.update_endpoint("https://node-1.example:8443")
    assert reader.get_node(node.address).endpoint == "https://node-1.example:8443"

    # fund: a client funds deposit and reserve
    client.fund_deposit(3 * TOKEN)
    client.fund_reserve(2 * TOKEN)
    assert client.sender_funds().deposit == 3 * TOKEN

    # redeem: winning tickets pay the node; replays, expiry and theft are refused
    rand = new_recipient_rand()
    ticket = make_ticket(client, node.address, rand, 1)
    sig = client.sign_ticket(ticket)
    receipt = node.redeem_ticket(ticket, sig, rand)
    assert receipt.gas_used <= 85_000
    assert node.is_ticket_redeemed(ticket)
    with pytest.raises(TicketReplayed):
        node.redeem_ticket(ticket, sig, rand)
    stale = make_ticket(client, node.address, rand, 2, expiry=client.chain_time() - 1)
    with pytest.raises(TicketExpired):
        node.redeem_ticket(stale, client.sign_ticket(stale), rand)
    ticket3 = make_ticket(client, node.address, rand, 3)
    with pytest.raises(WrongTicketRecipient):
        actors["other_node"].redeem_ticket(ticket3, client.sign_ticket(ticket3), rand)
    other = actors["other_node"]  # opened its earnings slot first: a cheap first redemption
    assert not other.earnings_open()
    other.open_earnings()
    assert other.earnings_open() and other.earnings() == 0
    ticket5 = make_ticket(client, other.address, rand, 5)
    assert other.redeem_ticket(ticket5, client.sign_ticket(ticket5), rand).gas_used < 80_000
    client.fund_deposit(TOKEN)
    big = make_ticket(client, node.address, rand, 4, face_value=3 * TOKEN)
    node.redeem_ticket(big, client.sign_ticket(big), rand)  # 2 from deposit, 1 from reserve
    assert client.sender_funds().deposit == 0 and client.sender_funds().reserve == TOKEN
    assert node.earnings() == 4 * TOKEN
    paid = reader.redeemed_tickets(sender=client.address)
    assert [(t.recipient, t.face_value) for t in paid] == [
        (node.address, TOKEN),
        (other.address, TOKEN),
        (node.address, 3 * TOKEN),
    ]
    assert paid[0].ticket_hash == client.ticket_hash(ticket)
    assert reader.redeemed_tickets(recipient=other.address) == [paid[1]]
    before = node.token_balance()
    node.withdraw_earnings()
    assert node.token_balance() == before + 4 * TOKEN

    # challenge: validators stake, one challenges the node, both vote to slash
    v1.register_validator(PARAMS.min_validator_stake)
    v2.register_validator(PARAMS.min_validator_stake)
    challenge = v1.open_challenge(node.address, b"\x99" * 32, PARAMS.min_bond)
    v1.vote(challenge, True)
    with pytest.raises(AlreadyVoted):
        v1.vote(challenge, False)
    v2.vote(challenge, True)
    info = reader.get_challenge(challenge)
    assert info.status is ChallengeStatus.OPEN and info.votes_for == 2 * PARAMS.min_validator_stake

    # slash: 2/3 quorum reached; 10% of 500 slashed, half to the challenger
    v1_balance = v1.token_balance()
    assert v1.resolve_challenge(challenge) is ChallengeStatus.SLASHED
    assert reader.get_node(node.address).stake == 450 * TOKEN
    assert v1.token_balance() == v1_balance + 25 * TOKEN + PARAMS.min_bond
    assert reader.token_total_burned() == 25 * TOKEN
    # what `veil status` lists: every validator and every challenge
    assert list(reader.validators()) == [v1.address, v2.address]
    assert reader.validators()[v2.address].stake == PARAMS.min_validator_stake
    [listed] = reader.challenges()
    assert listed.challenge_id == challenge and listed.status is ChallengeStatus.SLASHED
    assert listed.slashed == 50 * TOKEN and listed.node == node.address

    # leave: unbond everything, withdrawal waits for the unbonding period
    node.unbond(450 * TOKEN)
    assert reader.active_nodes() == []
    with pytest.raises(TooEarly):
        node.withdraw_stake()
    devnet.advance_time(PARAMS.unbonding_period)
    node.withdraw_stake()
    assert not reader.get_node(node.address).registered


def test_typed_errors_and_read_only(deployment, actors) -> None:
    reader, client = actors["reader"], actors["client"]
    with pytest.raises(DeploymentError, match="serves chain 31337"):
        ChainClient(replace(deployment, chain_id=1))
    with pytest.raises(ChainError, match="private key"):
        reader.fund_deposit(1)
    with pytest.raises(InsufficientFunds):
        client.withdraw_earnings()
