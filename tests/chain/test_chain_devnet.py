"""The anvil devnet launcher: lookup order, start on a free loopback port, clean stop."""

from __future__ import annotations

import signal
import socket
import stat
import time

import pytest

from veil.chain.devnet import ANVIL_RELATIVE, Devnet, devnet_accounts, find_anvil
from veil.chain.errors import DevnetError


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_env_var_wins(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "anvil"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("VEIL_ANVIL", str(fake))
    assert find_anvil() == fake


def test_env_var_pointing_nowhere_is_an_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VEIL_ANVIL", str(tmp_path / "missing"))
    with pytest.raises(DevnetError, match="VEIL_ANVIL"):
        find_anvil()


def test_repository_node_modules_is_found(monkeypatch) -> None:
    monkeypatch.delenv("VEIL_ANVIL", raising=False)
    assert str(find_anvil()).endswith(str(ANVIL_RELATIVE))


def test_missing_everywhere(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("VEIL_ANVIL", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("veil.chain.devnet._repo_roots", lambda: [tmp_path])
    with pytest.raises(DevnetError, match="npm install"):
        find_anvil()


def test_devnet_accounts_are_anvils() -> None:
    accounts = devnet_accounts(2)
    assert accounts[0].address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert accounts[1].address == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    assert "private_key" not in repr(accounts[0])


def test_start_rpc_advance_and_stop() -> None:
    devnet = Devnet(chain_id=4242)
    with pytest.raises(DevnetError, match="not started"):
        _ = devnet.rpc_url
    with devnet:
        assert devnet.running
        assert devnet.rpc_url.startswith("http://127.0.0.1:")
        assert port_open(devnet.port)
        assert int(devnet.rpc("eth_chainId"), 16) == 4242
        t0 = int(devnet.rpc("eth_getBlockByNumber", "latest", False)["timestamp"], 16)
        devnet.advance_time(1000)
        t1 = int(devnet.rpc("eth_getBlockByNumber", "latest", False)["timestamp"], 16)
        assert t1 - t0 >= 1000
        with pytest.raises(DevnetError, match="no_such_method"):
            devnet.rpc("no_such_method")
    assert not devnet.running
    assert not port_open(devnet.port)
    devnet.stop()  # idempotent


def test_port_in_use_is_reported() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(DevnetError, match="anvil failed to start"):
            Devnet(port=busy.getsockname()[1], startup_timeout=5).start()


def test_supervised_anvil_restarts_on_its_port_with_its_state(tmp_path) -> None:
    """As `veil up` runs it: under a lifeline, stderr in a private log; killed, it reports its
    exit, and a new start comes back on the same port with the state it had written."""
    log = tmp_path / "logs" / "chain.log"
    devnet = Devnet(
        state_path=tmp_path / "state.json", state_interval_s=1, log_path=log, die_with_parent=True
    )
    with devnet:
        assert devnet.returncode is None
        devnet.advance_time(5000)
        height = int(devnet.rpc("eth_blockNumber"), 16)
        assert height >= 1
        port = devnet.port
        time.sleep(2.5)  # a state write (every second here)
        devnet._proc.kill()  # the lifeline, and anvil with it (its parent-death signal)
        devnet._proc.wait(10)
        assert devnet.returncode == -signal.SIGKILL and not devnet.running
        devnet.start()
        assert devnet.port == port and int(devnet.rpc("eth_blockNumber"), 16) >= height
    assert devnet.returncode is None  # stopped, not exited
    assert log.exists() and log.stat().st_mode & 0o777 == 0o600
