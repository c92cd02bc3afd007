"""The relay's node list read from the on-chain registry."""

from __future__ import annotations

import pytest

from veil.relay.directory import ChainNodeDirectory

A = "0x" + "Ab" * 20
B = "0x" + "cD" * 20


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lists_registered_nodes_by_operator_address_case_insensitively():
    directory = ChainNodeDirectory(lambda: [(A, "http://127.0.0.1:9001")])
    directory.refresh()
    assert directory.get(A).url == "http://127.0.0.1:9001"
    assert directory.get(A.lower()).gateway_url == "http://127.0.0.1:9001/gateway"
    assert directory.get(B) is None


def test_a_miss_refreshes_at_most_once_per_gap():
    clock = Clock()
    entries: list[tuple[str, str]] = []
    reads = []

    def read():
        reads.append(1)
        return list(entries)

    directory = ChainNodeDirectory(read, min_gap_s=1.0, clock=clock)
    directory.refresh()
    entries.append((B, "http://127.0.0.1:9002"))
    assert directory.get(B) is None  # within the gap: no new read
    clock.now = 1.5
    assert directory.get(B).url == "http://127.0.0.1:9002"  # a new node, found on the miss
    assert len(reads) == 2


def test_bad_endpoints_are_skipped_and_a_failed_read_keeps_the_list(caplog):
    state = {"fail": False}

    def read():
        if state["fail"]:
            raise ConnectionError("rpc down")
        return [(A, "http://127.0.0.1:9001"), (B, "file:///etc/passwd")]

    directory = ChainNodeDirectory(read)
    directory.refresh()
    assert len(directory) == 1 and directory.get(B) is None
    state["fail"] = True
    directory.refresh()
    assert directory.get(A) is not None
    assert "registry read failed" in caplog.text


def test_an_unchanged_entry_is_reused_and_a_bad_one_logged_once(caplog):
    entries = [(A, "http://127.0.0.1:9001"), (B, "http://127.0.0.1:9002/path")]
    directory = ChainNodeDirectory(lambda: list(entries))
    directory.refresh()
    first = directory.get(A)
    for _ in range(3):
        directory.refresh()
    assert directory.get(A) is first  # the same record: not rebuilt per refresh
    assert caplog.text.count("skipping registry entry") == 1
    entries[0] = (A, "http://127.0.0.1:9101")  # a changed endpoint is taken at once
    entries[1] = (B, "http://127.0.0.1:9102")  # and a fixed one is listed
    directory.refresh()
    assert directory.get(A).url == "http://127.0.0.1:9101"
    assert directory.get(B).url == "http://127.0.0.1:9102"
    entries.pop()  # gone from the registry: gone from the relay
    directory.refresh()
    assert directory.get(B) is None and len(directory) == 1


@pytest.mark.integration
def test_reads_active_nodes_from_a_devnet():
    from veil.chain import ChainClient, Devnet, deploy
    from veil.chain.types import ModelEntry

    with Devnet() as devnet:
        deployer, operator = devnet.accounts[0], devnet.accounts[1]
        deployment = deploy(devnet.rpc_url, deployer.private_key, mint={operator.address: 10**21})
        reader = ChainClient(deployment)
        directory = ChainNodeDirectory(
            lambda: [(n.operator, n.endpoint) for n in reader.active_nodes()], min_gap_s=0.0
        ).start()
        try:
            assert directory.get(operator.address) is None
            node = ChainClient(deployment, operator.private_key)
            node.register_node(
                "http://127.0.0.1:9100",
                b"\x01" * 32,
                b"\x02" * 32,
                [ModelEntry("m", b"\x03" * 32)],
                reader.min_stake(),
            )
            assert directory.get(operator.address).url == "http://127.0.0.1:9100"
        finally:
            directory.stop()
