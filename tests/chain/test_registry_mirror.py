"""`RegistryMirror`: active records kept current from the registry's events, on a real devnet.

After each change the long-lived mirror (incremental: logs since its last block) must equal a
fresh full read, and it must have made only its first full read."""

from __future__ import annotations

import pytest

from veil.chain import ChainClient, Devnet, ModelEntry, deploy
from veil.chain.deployment import TOKEN, ChainParams
from veil.chain.errors import ChainError
from veil.chain.registry import RegistryMirror

pytestmark = pytest.mark.integration

MODEL = ModelEntry("SmolLM2-135M-Instruct", b"\x33" * 32)
OTHER = ModelEntry("other-model", b"\x34" * 32)
PARAMS = ChainParams()


@pytest.fixture(scope="module")
def chain():
    with Devnet() as devnet:
        keys = [a.private_key for a in devnet.accounts]
        mint = {a.address: 10_000 * TOKEN for a in devnet.accounts[1:8]}
        deployment = deploy(devnet.rpc_url, keys[0], params=PARAMS, mint=mint)
        yield devnet, deployment, [ChainClient(deployment, k) for k in keys[1:8]]


def by_operator(records):
    return {r.operator.lower(): r for r in records}


def fresh(deployment) -> dict:
    return by_operator(RegistryMirror(ChainClient(deployment)).active_nodes())


def test_the_mirror_follows_every_kind_of_change(chain) -> None:
    _devnet, deployment, ops = chain
    mirror = RegistryMirror(ChainClient(deployment), batch_size=2)  # several batches per read
    assert mirror.active_nodes() == []

    def check() -> dict:
        got = by_operator(mirror.active_nodes())
        assert got == fresh(deployment)
        return got

    stake = PARAMS.min_stake
    for i, op in enumerate(ops[:5]):
        op.register_node(f"http://127.0.0.1:{9000 + i}", b"\x11" * 32, b"\x22" * 32, [MODEL], stake)
    assert len(check()) == 5
    ops[0].update_endpoint("http://127.0.0.1:9500")
    ops[1].update_models([MODEL, OTHER])
    ops[2].update_ohttp_keys(b"\x55" * 32)
    ops[3].add_stake(TOKEN)
    got = check()
    assert got[ops[0].address.lower()].endpoint == "http://127.0.0.1:9500"
    assert got[ops[1].address.lower()].models == (MODEL, OTHER)
    assert got[ops[3].address.lower()].stake == stake + TOKEN
    ops[4].unbond(stake)  # below the minimum: inactive, gone from the list
    assert ops[4].address.lower() not in check()
    ops[4].add_stake(stake)  # back
    assert ops[4].address.lower() in check()
    mirror.active_nodes()  # no new block: nothing read but the head
    assert mirror.full_reads == 1


def test_a_head_that_goes_backwards_forces_a_full_read(chain) -> None:
    devnet, deployment, ops = chain
    mirror = RegistryMirror(ChainClient(deployment))
    before = by_operator(mirror.active_nodes())
    snapshot = devnet.rpc("evm_snapshot")
    ops[5].register_node("http://127.0.0.1:9600", b"\x11" * 32, b"\x22" * 32, [MODEL], TOKEN * 100)
    assert ops[5].address.lower() in by_operator(mirror.active_nodes())
    devnet.rpc("evm_revert", snapshot)  # the registration never happened
    assert by_operator(mirror.active_nodes()) == before
    assert mirror.full_reads == 2


def test_a_full_read_runs_again_after_full_every_s(chain) -> None:
    _devnet, deployment, _ops = chain
    now = [0.0]
    mirror = RegistryMirror(ChainClient(deployment), full_every_s=60, clock=lambda: now[0])
    mirror.active_nodes()
    now[0] = 30
    mirror.active_nodes()
    assert mirror.full_reads == 1
    now[0] = 61
    mirror.active_nodes()
    assert mirror.full_reads == 2


def test_an_rpc_that_refuses_a_batch_is_a_typed_error(chain, monkeypatch) -> None:
    _devnet, deployment, _ops = chain
    client = ChainClient(deployment)
    mirror = RegistryMirror(client)
    monkeypatch.setattr(
        client.w3.provider,
        "make_batch_request",
        lambda requests: {"jsonrpc": "2.0", "id": None, "error": {"code": -32600}},
    )
    with pytest.raises(ChainError):
        mirror.active_nodes()
    monkeypatch.setattr(
        client.w3.provider,
        "make_batch_request",
        lambda requests: [{"jsonrpc": "2.0", "id": i, "result": "0x12"} for i in requests],
    )
    with pytest.raises(ChainError):
        mirror.active_nodes()
