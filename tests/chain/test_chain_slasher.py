"""Slasher: validators, challenges, voting, quorum, slashing, bonds."""

import boa
import pytest

from support.chain import PARAMS, TOKEN, factory

MIN = PARAMS.min_stake
VSTAKE = PARAMS.min_validator_stake
EVIDENCE = b"\x99" * 32
OPEN, SLASHED, REJECTED = 1, 2, 3


@pytest.fixture
def setup(ledger, node_op, validators):
    """A node with 1000 tokens staked and three equal validators, one block later."""
    ledger.register_node(node_op, 1000 * TOKEN)
    for v in validators:
        ledger.register_validator(v)
    boa.env.time_travel(blocks=1)
    return ledger


def vote(ledger, validator: str, cid: int, support: bool = True) -> None:
    with boa.env.prank(validator):
        ledger.slasher.vote(cid, support)


def test_register_and_exit_validator(ledger, alice, unchanged) -> None:
    a = alice.address
    ledger.register_validator(a, VSTAKE + 1)
    v = ledger.slasher.getValidator(a)
    assert (v.stake, v.sinceBlock, v.unbondingEndsAt) == (
        VSTAKE + 1,
        boa.env.evm.patch.block_number,
        0,
    )
    assert ledger.slasher.totalValidatorStake() == VSTAKE + 1
    ledger.mint(a, VSTAKE)
    ledger.approve(a, ledger.slasher, VSTAKE)
    with unchanged("already a validator"), boa.env.prank(a):
        ledger.slasher.registerValidator(VSTAKE)
    with unchanged("not unbonding"), boa.env.prank(a):
        ledger.slasher.withdrawValidator()
    with boa.env.prank(a):
        ledger.slasher.unbondValidator()
    assert ledger.slasher.totalValidatorStake() == 0
    with unchanged("already unbonding"), boa.env.prank(a):
        ledger.slasher.unbondValidator()
    with unchanged("unbonding period not over"), boa.env.prank(a):
        ledger.slasher.withdrawValidator()
    boa.env.time_travel(seconds=PARAMS.validator_unbonding_period)
    with boa.env.prank(a):
        ledger.slasher.withdrawValidator()
    assert ledger.token.balanceOf(a) == 2 * VSTAKE + 1
    assert ledger.slasher.getValidator(a) == (0, 0, 0)


def test_register_validator_failures(ledger, alice, unchanged) -> None:
    ledger.mint(alice.address, VSTAKE)
    with unchanged("stake below minimum"), boa.env.prank(alice.address):
        ledger.slasher.registerValidator(VSTAKE - 1)
    with unchanged("insufficient allowance"), boa.env.prank(alice.address):
        ledger.slasher.registerValidator(VSTAKE)
    with unchanged("not a validator"), boa.env.prank(alice.address):
        ledger.slasher.unbondValidator()


def test_upheld_challenge_slashes_rewards_and_burns(setup, node_op, validators, alice) -> None:
    ledger = setup
    challenger = validators[0]
    cid = ledger.open_challenge(challenger, node_op, EVIDENCE, 20 * TOKEN)
    supply = ledger.token.totalSupply()
    assert cid == 0
    c = ledger.slasher.getChallenge(cid)
    assert (c.node, c.challenger, c.evidenceHash, c.bond, c.status) == (
        node_op,
        challenger,
        EVIDENCE,
        20 * TOKEN,
        OPEN,
    )
    assert c.stakeSnapshot == 3 * VSTAKE
    assert c.deadline == boa.env.timestamp + PARAMS.voting_window
    assert ledger.slasher.openChallengesAgainst(node_op) == 1
    vote(ledger, validators[0], cid)
    with boa.reverts("voting still open"):
        ledger.slasher.resolve(cid)  # 1/3 is not a quorum yet
    vote(ledger, validators[1], cid)
    assert ledger.slasher.hasVoted(cid, validators[1])
    with boa.env.prank(alice.address):
        ledger.slasher.resolve(cid)  # 2/3 reached: anyone may settle at once
    slashed = 100 * TOKEN  # 10% of 1000
    reward = slashed // 2
    c = ledger.slasher.getChallenge(cid)
    assert (c.status, c.slashed, c.votesFor) == (SLASHED, slashed, 2 * VSTAKE)
    assert ledger.registry.stakeOf(node_op) == 900 * TOKEN
    assert ledger.token.balanceOf(challenger) == reward + 20 * TOKEN  # reward + bond back
    assert ledger.token.totalSupply() == supply - (slashed - reward)
    assert ledger.slasher.openChallengesAgainst(node_op) == 0
    assert ledger.slasher.totalBonds() == 0


def test_slash_includes_unbonding_stake(setup, node_op, validators) -> None:
    ledger = setup
    with boa.env.prank(node_op):
        ledger.registry.unbond(1000 * TOKEN)  # leaving: all of it unbonding
    cid = ledger.open_challenge(validators[0], node_op, EVIDENCE)
    for v in validators:
        vote(ledger, v, cid)
    ledger.slasher.resolve(cid)
    node = ledger.registry.getNode(node_op)
    assert (node.stake, node.unbonding) == (0, 900 * TOKEN)


def test_failed_challenge_burns_the_bond(setup, node_op, validators) -> None:
    ledger = setup
    cid = ledger.open_challenge(validators[0], node_op, EVIDENCE, 15 * TOKEN)
    supply = ledger.token.totalSupply()
    vote(ledger, validators[0], cid, True)
    vote(ledger, validators[1], cid, False)
    c = ledger.slasher.getChallenge(cid)
    assert (c.votesFor, c.votesAgainst) == (VSTAKE, VSTAKE)
    with boa.reverts("voting still open"):
        ledger.slasher.resolve(cid)
    boa.env.time_travel(seconds=PARAMS.voting_window)
    ledger.slasher.resolve(cid)
    assert ledger.slasher.getChallenge(cid).status == REJECTED
    assert ledger.registry.stakeOf(node_op) == 1000 * TOKEN
    assert ledger.token.totalSupply() == supply - 15 * TOKEN
    assert ledger.token.balanceOf(validators[0]) == 0


def test_resolve_failures(setup, node_op, validators, unchanged) -> None:
    ledger = setup
    with unchanged("no such challenge"):
        ledger.slasher.resolve(0)
    cid = ledger.open_challenge(validators[0], node_op, EVIDENCE)
    with unchanged("voting still open"):
        ledger.slasher.resolve(cid)
    boa.env.time_travel(seconds=PARAMS.voting_window)
    ledger.slasher.resolve(cid)
    with unchanged("challenge not open"):
        ledger.slasher.resolve(cid)


def test_vote_failures(setup, node_op, validators, alice, unchanged) -> None:
    ledger = setup
    with unchanged("no such challenge"), boa.env.prank(validators[0]):
        ledger.slasher.vote(0, True)
    cid = ledger.open_challenge(validators[0], node_op, EVIDENCE)
    with unchanged("not a validator"), boa.env.prank(alice.address):
        ledger.slasher.vote(cid, True)
    vote(ledger, validators[0], cid)
    with unchanged("already voted"), boa.env.prank(validators[0]):
        ledger.slasher.vote(cid, False)
    # a validator that joins after the challenge opened cannot vote on it
    ledger.register_validator(alice.address)
    with unchanged("validator joined after challenge"), boa.env.prank(alice.address):
        ledger.slasher.vote(cid, True)
    # an unbonding validator no longer votes
    with boa.env.prank(validators[2]):
        ledger.slasher.unbondValidator()
    with unchanged("not a validator"), boa.env.prank(validators[2]):
        ledger.slasher.vote(cid, True)
    boa.env.time_travel(seconds=PARAMS.voting_window)
    with unchanged("voting closed"), boa.env.prank(validators[1]):
        ledger.slasher.vote(cid, True)
    ledger.slasher.resolve(cid)
    with unchanged("challenge not open"), boa.env.prank(validators[1]):
        ledger.slasher.vote(cid, True)


def test_node_cannot_vote_on_its_own_challenge(ledger, node_op, validators, unchanged) -> None:
    ledger.register_node(node_op)
    ledger.register_validator(node_op)  # a node that is also a validator
    ledger.register_validator(validators[0])
    boa.env.time_travel(blocks=1)
    cid = ledger.open_challenge(validators[0], node_op, EVIDENCE)
    with unchanged("cannot vote on own challenge"), boa.env.prank(node_op):
        ledger.slasher.vote(cid, False)


def test_open_challenge_failures(setup, node_op, node2, validators, alice, unchanged) -> None:
    ledger = setup
    v = validators[0]
    ledger.mint(v, 100 * TOKEN)
    ledger.approve(v, ledger.slasher, 100 * TOKEN)
    with unchanged("empty evidence"), boa.env.prank(v):
        ledger.slasher.openChallenge(node_op, b"\x00" * 32, PARAMS.min_bond)
    with unchanged("cannot challenge self"), boa.env.prank(node_op):
        ledger.slasher.openChallenge(node_op, EVIDENCE, PARAMS.min_bond)
    ledger.mint(alice.address, 100 * TOKEN)
    with unchanged("challenger has no stake"), boa.env.prank(alice.address):
        ledger.slasher.openChallenge(node_op, EVIDENCE, PARAMS.min_bond)
    with unchanged("bond too small"), boa.env.prank(v):
        ledger.slasher.openChallenge(node_op, EVIDENCE, PARAMS.min_bond - 1)
    with unchanged("node has no slashable stake"), boa.env.prank(v):
        ledger.slasher.openChallenge(node2, EVIDENCE, PARAMS.min_bond)
    with boa.env.prank(v):
        ledger.slasher.openChallenge(node_op, EVIDENCE, PARAMS.min_bond)
    with unchanged("evidence already used"), boa.env.prank(v):
        ledger.slasher.openChallenge(node_op, EVIDENCE, PARAMS.min_bond)


def test_a_staked_node_may_challenge(setup, node_op, node2, validators) -> None:
    ledger = setup
    ledger.register_node(node2)
    cid = ledger.open_challenge(node2, node_op, EVIDENCE)
    assert ledger.slasher.getChallenge(cid).challenger == node2


def test_no_validators_no_challenge(ledger, node_op, node2, unchanged) -> None:
    ledger.register_node(node_op)
    ledger.register_node(node2)
    ledger.mint(node2, PARAMS.min_bond)
    ledger.approve(node2, ledger.slasher, PARAMS.min_bond)
    with unchanged("no validators"), boa.env.prank(node2):
        ledger.slasher.openChallenge(node_op, EVIDENCE, PARAMS.min_bond)


def test_validators_must_outlast_the_window(ledger) -> None:
    args = [ledger.token, ledger.registry, VSTAKE]
    tail = [PARAMS.min_bond]
    with boa.reverts("unbonding shorter than window"):
        factory("Slasher").deploy(*args, 100, *tail, 100, 1000, 5000)
    with boa.reverts("zero voting window"):
        factory("Slasher").deploy(*args, 100, *tail, 0, 1000, 5000)
    with boa.reverts("zero minimum stake"):
        factory("Slasher").deploy(ledger.token, ledger.registry, 0, 100, *tail, 10, 1000, 5000)
    with boa.reverts("fraction above 100%"):
        factory("Slasher").deploy(*args, 100, *tail, 10, 10_001, 5000)


def test_view_of_unknown_challenge(ledger) -> None:
    with boa.reverts("no such challenge"):
        ledger.slasher.getChallenge(0)
    assert ledger.slasher.challengeCount() == 0
