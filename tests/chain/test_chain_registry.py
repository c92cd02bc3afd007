"""NodeRegistry: registration, updates, stake, unbonding, withdrawal, slashing, views."""

import boa
import pytest

from support.chain import DAY, PARAMS, TOKEN, factory

MIN = PARAMS.min_stake
ZERO = "0x" + "00" * 20
MODELS = [("SmolLM2-135M-Instruct", b"\x33" * 32)]


def test_register_records_node(ledger, node_op) -> None:
    ledger.register_node(node_op, MIN + 5)
    events = [type(e).__name__ for e in ledger.registry.get_logs()]
    assert events == ["Transfer", "NodeRegistered", "ModelsUpdated"]
    node = ledger.registry.getNode(node_op)
    assert node.operator == node_op
    assert node.endpoint == "https://node.example"
    assert node.ohttpKeysHash == b"\x11" * 32
    assert node.attestationDigest == b"\x22" * 32
    assert node.stake == MIN + 5
    assert node.registered and node.active
    assert [(m.modelId, m.weightsHash) for m in node.models] == MODELS
    assert ledger.token.balanceOf(ledger.registry.address) == MIN + 5
    assert ledger.registry.totalStaked() == MIN + 5
    assert ledger.registry.operatorCount() == 1
    assert ledger.registry.operatorAt(0) == node_op
    assert ledger.registry.activeNodes(0, 10) == [(node_op, MIN + 5)]


@pytest.mark.parametrize(
    ("kwargs", "stake", "reason"),
    [
        ({"endpoint": ""}, MIN, "empty endpoint"),
        ({"keys": b"\x00" * 32}, MIN, "zero hash"),
        ({"attestation": b"\x00" * 32}, MIN, "zero hash"),
        ({"models": []}, MIN, "no models"),
        ({"models": [("", b"\x01" * 32)]}, MIN, "empty model id"),
        ({"models": [("m", b"\x00" * 32)]}, MIN, "zero hash"),
        ({}, MIN - 1, "stake below minimum"),
    ],
)
def test_register_rejects_bad_input(ledger, node_op, unchanged, kwargs, stake, reason) -> None:
    ledger.mint(node_op, MIN)
    ledger.approve(node_op, ledger.registry, MIN)
    args = {
        "endpoint": "https://n",
        "keys": b"\x11" * 32,
        "attestation": b"\x22" * 32,
        "models": MODELS,
    } | kwargs
    with unchanged(reason), boa.env.prank(node_op):
        ledger.registry.register(
            args["endpoint"], args["keys"], args["attestation"], args["models"], stake
        )


def test_register_needs_tokens_and_is_once(ledger, node_op, unchanged) -> None:
    with unchanged("insufficient allowance"), boa.env.prank(node_op):
        ledger.registry.register("https://n", b"\x11" * 32, b"\x22" * 32, MODELS, MIN)
    ledger.register_node(node_op)
    ledger.mint(node_op, MIN)
    ledger.approve(node_op, ledger.registry, MIN)
    with unchanged("already registered"), boa.env.prank(node_op):
        ledger.registry.register("https://n", b"\x11" * 32, b"\x22" * 32, MODELS, MIN)


def test_updates(ledger, node_op) -> None:
    ledger.register_node(node_op)
    with boa.env.prank(node_op):
        ledger.registry.updateEndpoint("https://new.example")
        ledger.registry.updateOhttpKeys(b"\x44" * 32)
        ledger.registry.updateAttestation(b"\x55" * 32)
        ledger.registry.updateModels([("a", b"\x01" * 32), ("b", b"\x02" * 32)])
    assert [type(e).__name__ for e in ledger.registry.get_logs()] == ["ModelsUpdated"]
    node = ledger.registry.getNode(node_op)
    assert node.endpoint == "https://new.example"
    assert node.ohttpKeysHash == b"\x44" * 32
    assert node.attestationDigest == b"\x55" * 32
    assert [m.modelId for m in node.models] == ["a", "b"]


def test_update_failures(ledger, node_op, alice, unchanged) -> None:
    a = alice.address
    with unchanged("not registered"), boa.env.prank(a):
        ledger.registry.updateEndpoint("https://x")
    with unchanged("not registered"), boa.env.prank(a):
        ledger.registry.updateOhttpKeys(b"\x01" * 32)
    with unchanged("not registered"), boa.env.prank(a):
        ledger.registry.updateAttestation(b"\x01" * 32)
    with unchanged("not registered"), boa.env.prank(a):
        ledger.registry.updateModels(MODELS)
    ledger.register_node(node_op)
    with unchanged("empty endpoint"), boa.env.prank(node_op):
        ledger.registry.updateEndpoint("")
    with unchanged("zero hash"), boa.env.prank(node_op):
        ledger.registry.updateOhttpKeys(b"\x00" * 32)
    with unchanged("zero hash"), boa.env.prank(node_op):
        ledger.registry.updateAttestation(b"\x00" * 32)
    with unchanged("no models"), boa.env.prank(node_op):
        ledger.registry.updateModels([])


NOT_HOST_PORT = "endpoint must be http(s)://host[:port]"


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://node.example/",  # a path, even an empty one
        "https://node.example/gateway",
        "http://127.0.0.1:8545/rpc",
        "https://node.example?x=1",  # a query
        "https://node.example#f",  # a fragment
        "https://user@node.example",  # userinfo
        "https://node.example%2f",  # an escape
        "https://Node.example",  # upper case
        "https://node.example\\x",  # a backslash, which some parsers read as "/"
        "https://node example",
        "https://nöde.example",  # non-ASCII
        "ftp://node.example",  # other schemes
        "file:///etc/passwd",
        "HTTPS://node.example",
        "https:/node.example",
        "node.example:443",
        "https://",  # no host
        "http://",
        "h",  # shorter than any scheme
    ],
)
def test_register_and_update_refuse_endpoints_that_are_not_host_and_port(
    ledger, node_op, unchanged, endpoint
) -> None:
    ledger.mint(node_op, MIN)
    ledger.approve(node_op, ledger.registry, MIN)
    with unchanged(NOT_HOST_PORT), boa.env.prank(node_op):
        ledger.registry.register(endpoint, b"\x11" * 32, b"\x22" * 32, MODELS, MIN)
    ledger.register_node(node_op)
    with unchanged(NOT_HOST_PORT), boa.env.prank(node_op):
        ledger.registry.updateEndpoint(endpoint)


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://node.example",
        "http://127.0.0.1:18001",
        "https://[2001:db8::1]:8443",
        "https://xn--nde-6ma.example:443",
        "https://" + "a" * 248,  # the longest the registry stores
    ],
)
def test_register_and_update_take_scheme_host_port(ledger, node_op, endpoint) -> None:
    ledger.register_node(node_op, endpoint=endpoint)
    assert ledger.registry.getNode(node_op).endpoint == endpoint
    with boa.env.prank(node_op):
        ledger.registry.updateEndpoint(endpoint[:-1] + "0")
    assert ledger.registry.getNode(node_op).endpoint == endpoint[:-1] + "0"


def test_add_stake(ledger, node_op, alice, unchanged) -> None:
    ledger.register_node(node_op)
    ledger.mint(node_op, 7)
    ledger.approve(node_op, ledger.registry, 7)
    with boa.env.prank(node_op):
        ledger.registry.addStake(7)
    assert ledger.registry.stakeOf(node_op) == MIN + 7
    with unchanged("zero amount"), boa.env.prank(node_op):
        ledger.registry.addStake(0)
    with unchanged("not registered"), boa.env.prank(alice.address):
        ledger.registry.addStake(1)
    with unchanged("insufficient allowance"), boa.env.prank(node_op):
        ledger.registry.addStake(1)


def test_partial_unbond_then_withdraw(ledger, node_op, unchanged) -> None:
    ledger.register_node(node_op, MIN + 50)
    with boa.env.prank(node_op):
        ledger.registry.unbond(50)
    node = ledger.registry.getNode(node_op)
    assert (node.stake, node.unbonding) == (MIN, 50)
    assert node.unbondingEndsAt == boa.env.timestamp + PARAMS.unbonding_period
    assert node.active
    assert ledger.registry.slashableOf(node_op) == MIN + 50
    with unchanged("unbonding period not over"), boa.env.prank(node_op):
        ledger.registry.withdraw()
    boa.env.time_travel(seconds=PARAMS.unbonding_period - 1)
    with unchanged("unbonding period not over"), boa.env.prank(node_op):
        ledger.registry.withdraw()
    boa.env.time_travel(seconds=1)
    with boa.env.prank(node_op):
        ledger.registry.withdraw()
    assert ledger.token.balanceOf(node_op) == 50
    node = ledger.registry.getNode(node_op)
    assert (node.stake, node.unbonding, node.registered) == (MIN, 0, True)


def test_unbond_everything_leaves_and_allows_reregistering(ledger, node_op) -> None:
    ledger.register_node(node_op)
    with boa.env.prank(node_op):
        ledger.registry.unbond(MIN)
    assert not ledger.registry.isActive(node_op)
    assert ledger.registry.activeNodes(0, 10) == []
    boa.env.time_travel(seconds=PARAMS.unbonding_period)
    with boa.env.prank(node_op):
        ledger.registry.withdraw()
    assert not ledger.registry.getNode(node_op).registered
    assert ledger.registry.getNode(node_op).models == []
    assert ledger.registry.totalStaked() == 0
    ledger.register_node(node_op)  # back again, listed once
    assert ledger.registry.operatorCount() == 1
    assert ledger.registry.isActive(node_op)


def test_unbond_failures(ledger, node_op, alice, unchanged) -> None:
    with unchanged("not registered"), boa.env.prank(alice.address):
        ledger.registry.unbond(1)
    ledger.register_node(node_op, MIN + 10)
    with unchanged("zero amount"), boa.env.prank(node_op):
        ledger.registry.unbond(0)
    with unchanged("insufficient stake"), boa.env.prank(node_op):
        ledger.registry.unbond(MIN + 11)
    with unchanged("stake below minimum"), boa.env.prank(node_op):
        ledger.registry.unbond(11)
    with unchanged("nothing unbonding"), boa.env.prank(node_op):
        ledger.registry.withdraw()


def test_second_unbond_restarts_the_timer(ledger, node_op) -> None:
    ledger.register_node(node_op, MIN + 20)
    with boa.env.prank(node_op):
        ledger.registry.unbond(10)
    boa.env.time_travel(seconds=DAY)
    with boa.env.prank(node_op):
        ledger.registry.unbond(10)
    node = ledger.registry.getNode(node_op)
    assert node.unbonding == 20
    assert node.unbondingEndsAt == boa.env.timestamp + PARAMS.unbonding_period


def test_withdraw_waits_for_open_challenges(ledger, node_op, validators, unchanged) -> None:
    ledger.register_node(node_op, MIN + 10)
    ledger.register_validator(validators[0])
    boa.env.time_travel(blocks=1)
    with boa.env.prank(node_op):
        ledger.registry.unbond(10)
    cid = ledger.open_challenge(validators[0], node_op, b"\x99" * 32)
    boa.env.time_travel(seconds=PARAMS.unbonding_period)
    with unchanged("challenge pending"), boa.env.prank(node_op):
        ledger.registry.withdraw()
    ledger.slasher.resolve(cid)  # window over, no votes: rejected
    with boa.env.prank(node_op):
        ledger.registry.withdraw()
    assert ledger.token.balanceOf(node_op) == 10


def test_only_slasher_slashes(ledger, node_op, alice, unchanged) -> None:
    ledger.register_node(node_op)
    with unchanged("only slasher"), boa.env.prank(alice.address):
        ledger.registry.slash(node_op, 1, alice.address, 0)
    with unchanged("only slasher"), boa.env.prank(ledger.deployer):
        ledger.registry.slash(node_op, 1, alice.address, 0)


def test_slash_takes_stake_then_unbonding(ledger, node_op, alice) -> None:
    ledger.register_node(node_op, MIN + 40)
    with boa.env.prank(node_op):
        ledger.registry.unbond(40)
    supply = ledger.token.totalSupply()
    with boa.env.prank(ledger.slasher.address):
        ledger.registry.slash(node_op, MIN + 10, alice.address, 6)
    node = ledger.registry.getNode(node_op)
    assert (node.stake, node.unbonding) == (0, 30)
    assert not node.active
    assert ledger.token.balanceOf(alice.address) == 6
    assert ledger.token.totalSupply() == supply - (MIN + 4)
    assert ledger.registry.totalStaked() == 30


def test_slash_bounds(ledger, node_op, alice, unchanged) -> None:
    ledger.register_node(node_op)
    with unchanged("slash exceeds slashable"), boa.env.prank(ledger.slasher.address):
        ledger.registry.slash(node_op, MIN + 1, alice.address, 0)
    with unchanged("reward exceeds slash"), boa.env.prank(ledger.slasher.address):
        ledger.registry.slash(node_op, 5, alice.address, 6)


def test_set_slasher_once_by_owner(ledger, alice, unchanged) -> None:
    with unchanged("not owner"), boa.env.prank(alice.address):
        ledger.registry.setSlasher(alice.address)
    with unchanged("slasher already set"), boa.env.prank(ledger.deployer):
        ledger.registry.setSlasher(alice.address)


def test_constructor_and_set_slasher_on_a_fresh_registry(ledger, alice) -> None:
    with boa.reverts("zero minimum stake"):
        factory("NodeRegistry").deploy(ledger.token, 0, DAY)
    with boa.env.prank(ledger.deployer):
        reg = factory("NodeRegistry").deploy(ledger.token, MIN, DAY)
        with boa.reverts("zero address"):
            reg.setSlasher(ZERO)
        reg.setSlasher(alice.address)
    assert reg.slasher() == alice.address


def test_withdraw_without_a_slasher(ledger, node_op) -> None:
    """Before the slasher is wired, withdrawal skips the pending-challenge check."""
    with boa.env.prank(ledger.deployer):
        reg = factory("NodeRegistry").deploy(ledger.token, MIN, DAY)
    ledger.mint(node_op, MIN)
    ledger.approve(node_op, reg, MIN)
    with boa.env.prank(node_op):
        reg.register("https://n", b"\x11" * 32, b"\x22" * 32, MODELS, MIN)
        reg.unbond(MIN)
    boa.env.time_travel(seconds=DAY)
    with boa.env.prank(node_op):
        reg.withdraw()
    assert ledger.token.balanceOf(node_op) == MIN


def test_active_nodes_pages_and_filters(ledger) -> None:
    ops = [boa.env.generate_address() for _ in range(5)]
    for i, op in enumerate(ops):
        ledger.register_node(op, MIN + i)
    with boa.env.prank(ops[1]):
        ledger.registry.unbond(MIN + 1)  # leaves
    assert ledger.registry.operatorCount() == 5
    assert [n.operator for n in ledger.registry.activeNodes(0, 64)] == [
        ops[0],
        ops[2],
        ops[3],
        ops[4],
    ]
    assert [n.stake for n in ledger.registry.activeNodes(2, 2)] == [MIN + 2, MIN + 3]
    assert ledger.registry.activeNodes(5, 10) == []
    assert ledger.registry.activeNodes(9, 10) == []
    assert len(ledger.registry.activeNodes(0, 1000)) == 4  # count is capped at a page


def test_unknown_node_views(ledger, alice) -> None:
    node = ledger.registry.getNode(alice.address)
    assert not node.registered and not node.active and node.stake == 0
    assert ledger.registry.slashableOf(alice.address) == 0
    assert ledger.registry.minStake() == MIN
    assert ledger.registry.unbondingPeriod() == PARAMS.unbonding_period
    assert ledger.registry.token() == ledger.token.address
    assert TOKEN == 10**18


def test_leaving_node_slashed_to_zero_can_still_deregister(ledger, node_op, alice) -> None:
    ledger.register_node(node_op)
    with boa.env.prank(node_op):
        ledger.registry.unbond(MIN)
    with boa.env.prank(ledger.slasher.address):
        ledger.registry.slash(node_op, MIN, alice.address, 0)
    boa.env.time_travel(seconds=PARAMS.unbonding_period)
    with boa.env.prank(node_op):
        ledger.registry.withdraw()
    assert not ledger.registry.getNode(node_op).registered
    assert ledger.token.balanceOf(node_op) == 0
    ledger.register_node(node_op)  # and may come back
    assert ledger.registry.isActive(node_op)


def test_token_keys_change_at_most_hourly_and_keep_the_previous(ledger, node_op, alice, unchanged):  # type: ignore[no-untyped-def]
    k1, k2, k3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    with unchanged("not registered"), boa.env.prank(alice.address):
        ledger.registry.commitTokenKey(k1)
    ledger.register_node(node_op)
    assert ledger.registry.tokenKeysOf(node_op) == (b"\x00" * 32, b"\x00" * 32, 0)
    with unchanged("zero key id"), boa.env.prank(node_op):
        ledger.registry.commitTokenKey(b"\x00" * 32)
    with boa.env.prank(node_op):
        ledger.registry.commitTokenKey(k1)  # the first commit: at once
    events = [type(e).__name__ for e in ledger.registry.get_logs()]
    assert events == ["TokenKeyCommitted"]
    first = boa.env.evm.patch.timestamp
    assert ledger.registry.tokenKeysOf(node_op) == (k1, b"\x00" * 32, first)
    with unchanged("key already committed"), boa.env.prank(node_op):
        ledger.registry.commitTokenKey(k1)
    boa.env.time_travel(seconds=3599)
    with unchanged("token key changed too recently"), boa.env.prank(node_op):
        ledger.registry.commitTokenKey(k2)  # a key per buyer would need a change per purchase
    boa.env.time_travel(seconds=1)
    with boa.env.prank(node_op):
        ledger.registry.commitTokenKey(k2)
    assert ledger.registry.tokenKeysOf(node_op)[:2] == (k2, k1)
    boa.env.time_travel(seconds=3600)
    with boa.env.prank(node_op):
        ledger.registry.commitTokenKey(k3)
    assert ledger.registry.tokenKeysOf(node_op)[:2] == (k3, k2)
