"""The deployment file and connecting a client to it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from veil.chain import ChainClient, Deployment
from veil.chain.contracts import CONTRACT_NAMES, compile_contract
from veil.chain.deployment import ChainParams, default_deployment_path
from veil.chain.devnet import free_port
from veil.chain.errors import ChainUnavailable, DeploymentError


def sample() -> Deployment:
    return Deployment(
        chain_id=31337,
        rpc_url="http://127.0.0.1:1",
        deployer="0x" + "11" * 20,
        block_number=1,
        addresses={n: "0x" + f"{i + 1:02x}" * 20 for i, n in enumerate(CONTRACT_NAMES)},
        abis={n: [] for n in CONTRACT_NAMES},
        params=ChainParams(min_stake=5),
    )


def test_round_trip(tmp_path) -> None:
    path = sample().save(tmp_path / "sub" / "deployment.json")
    assert Deployment.load(path) == sample()
    assert json.loads(path.read_text())["params"]["min_stake"] == 5


def test_default_path_follows_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("VEIL_DEPLOYMENT", str(tmp_path / "d.json"))
    assert default_deployment_path() == tmp_path / "d.json"
    monkeypatch.delenv("VEIL_DEPLOYMENT")
    assert str(default_deployment_path()) == ".veil/chain/deployment.json"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(format=99), "unsupported deployment format"),
        (lambda d: d["addresses"].pop("Slasher"), "lacks contracts: Slasher"),
        (lambda d: d.pop("chain_id"), "invalid deployment data"),
        (lambda d: d["params"].update(bogus=1), "invalid deployment data"),
    ],
)
def test_bad_files(tmp_path, edit, match) -> None:
    data = sample().to_json()
    edit(data)
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DeploymentError, match=match):
        Deployment.load(path)


def test_missing_and_unreadable(tmp_path) -> None:
    with pytest.raises(DeploymentError, match="veil chain up"):
        Deployment.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DeploymentError, match="cannot read"):
        Deployment.load(tmp_path / "bad.json")


def test_params_validation() -> None:
    with pytest.raises(DeploymentError, match="validator_unbonding_period"):
        replace(ChainParams(), validator_unbonding_period=10, voting_window=10).validate()
    with pytest.raises(DeploymentError, match="unbonding_period"):
        replace(ChainParams(), unbonding_period=1).validate()
    with pytest.raises(DeploymentError, match="basis points"):
        replace(ChainParams(), slash_fraction_bps=10_001).validate()
    ChainParams().validate()


def test_client_on_a_dead_endpoint() -> None:
    dead = replace(sample(), rpc_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ChainUnavailable):
        ChainClient(dead)


def test_compile_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path))
    first = compile_contract("ReleaseLog")
    cached = list((tmp_path / "vyper").glob("ReleaseLog-*.json"))
    assert len(cached) == 1
    assert compile_contract("ReleaseLog") == first  # served from the cache
    cached[0].write_text("garbage")
    assert compile_contract("ReleaseLog") == first  # a damaged entry is recompiled
    with pytest.raises(KeyError):
        compile_contract("Nope")
