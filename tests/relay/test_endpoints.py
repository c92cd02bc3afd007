"""One rule for node endpoints (`veil.wire.endpoint`), applied by the relay's node lists, the
node before it registers and the client's discovery."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from veil.chain.types import ModelEntry, NodeInfo
from veil.client.discovery import registry_reason
from veil.node.errors import NodeSetupError
from veil.node.onchain import ensure_registered
from veil.relay.directory import ChainNodeDirectory, NodeConfigError, load_nodes
from veil.wire.endpoint import EndpointError, check_endpoint, is_canonical_endpoint

A = "0x" + "Ab" * 20

CANONICAL = [
    "http://127.0.0.1:8001",
    "https://node.example",
    "https://node-1.example.com:8443",
    "http://xn--nde-6ma.example:9000",  # an IDN, in its ASCII form
    "https://[2001:db8::1]:8443",
    "http://[::1]:8001",
    "http://localhost:8080",  # canonical; whether it may be contacted is the relay's call
    "https://" + "a" * 63 + ".example",
]

NOT_CANONICAL = [
    # paths, even an empty one
    "https://node.example/",
    "https://node.example/gateway",
    "http://127.0.0.1:8545/rpc",
    "https://node.example:8443/.well-known/ohttp-keys",
    # query, fragment, userinfo
    "https://node.example?x=1",
    "https://node.example:8443?",
    "https://node.example#top",
    "https://user@node.example",
    "https://user:pw@node.example:8443",
    "https://node.example@127.0.0.1",
    # escapes, backslashes, spaces, control and non-ASCII characters
    "https://node%2eexample",
    "https://node.example\\@127.0.0.1",
    "https://node .example",
    "https://node.example\n",
    "https://nöde.example",
    # schemes
    "ftp://node.example",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379",
    "ws://node.example",
    "HTTPS://node.example",
    "https:/node.example",
    "//node.example",
    "node.example:443",
    "",
    # hosts
    "https://",
    "https://:8443",
    "https://Node.Example",  # upper case: a second spelling
    "https://node.example.",  # trailing dot
    "https://node..example",
    "https://-node.example",
    "https://node_1.example",
    "http://2130706433",  # 127.0.0.1 to a resolver
    "http://0x7f.0.0.1",
    "http://127.1",
    "http://127.000.0.1",
    "http://1.2.3.4.5",
    "https://[::ffff:127.0.0.1]",  # IPv4-mapped
    "https://[::ffff:7f00:1]",
    "https://[2001:DB8::1]",  # not the compressed form
    "https://[2001:db8:0:0:0:0:0:1]",
    "https://[fe80::1%eth0]",  # a zone
    "https://2001:db8::1",  # no brackets
    "https://[2001:db8::1",
    "https://" + "a" * 64 + ".example",  # a label over 63
    "https://" + "a" * 250 + ".example",  # over 256 in all
    # ports
    "https://node.example:",
    "https://node.example:0",
    "https://node.example:65536",
    "https://node.example:08443",
    "https://node.example:+443",
    "https://node.example:8443:1",
    "https://node.example:443",  # the default port: spelled without it
    "http://node.example:80",
]


@pytest.mark.parametrize("endpoint", CANONICAL)
def test_canonical_endpoints_pass_unchanged(endpoint: str) -> None:
    assert check_endpoint(endpoint) == endpoint
    assert is_canonical_endpoint(endpoint)


@pytest.mark.parametrize("endpoint", NOT_CANONICAL)
def test_everything_else_is_refused_with_a_reason(endpoint: str) -> None:
    with pytest.raises(EndpointError, match=r"must be http\(s\)://host\[:port\]: .+: .+"):
        check_endpoint(endpoint)
    assert not is_canonical_endpoint(endpoint)


def test_the_chain_directory_skips_every_non_canonical_entry(caplog) -> None:
    entries = [(f"0x{i:040x}", endpoint) for i, endpoint in enumerate(NOT_CANONICAL)]
    directory = ChainNodeDirectory(lambda: [*entries, (A, "http://127.0.0.1:9001")])
    directory.refresh()
    assert len(directory) == 1 and directory.get(A).url == "http://127.0.0.1:9001"
    assert all(directory.get(operator) is None for operator, _ in entries)
    assert caplog.text.count("skipping registry entry") == len(NOT_CANONICAL)


@pytest.mark.parametrize("endpoint", NOT_CANONICAL[:12])
def test_a_node_list_file_with_a_non_canonical_url_is_refused(tmp_path: Path, endpoint) -> None:
    path = tmp_path / "nodes.json"
    path.write_text(json.dumps({"nodes": [{"id": "a", "url": endpoint}]}))
    with pytest.raises(NodeConfigError, match="must be http"):
        load_nodes(path)


class NoChain:
    """A chain client the node must not touch: any call fails the test."""

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        raise AssertionError(f"the node called the chain ({name}) with a bad endpoint")


@pytest.mark.parametrize(
    "endpoint", ["https://node.example/gateway", "http://user@node.example", "https://Node.io"]
)
def test_a_node_refuses_to_register_a_non_canonical_endpoint(endpoint: str) -> None:
    with pytest.raises(NodeSetupError, match=r"cannot register: .*must be http"):
        ensure_registered(
            NoChain(),  # type: ignore[arg-type]
            endpoint=endpoint,
            ohttp_keys=b"k",
            evidence_data=b"e",
            models=[ModelEntry("m", b"\x01" * 32)],
        )


def test_discovery_refuses_a_node_whose_registered_endpoint_is_not_canonical() -> None:
    info = NodeInfo(
        operator=A,
        endpoint="https://node.example",
        ohttp_keys_hash=bytes(32),
        attestation_digest=bytes(32),
        stake=100,
        unbonding=0,
        unbonding_ends_at=0,
        registered=True,
        active=True,
        models=(ModelEntry("m", b"\x01" * 32),),
    )
    assert registry_reason(info, 100) is None
    for endpoint in ("https://node.example/x", "http://127.0.0.1:8545/?", "https://u@n.example"):
        reason = registry_reason(replace(info, endpoint=endpoint), 100)
        assert reason == "registered endpoint is not http(s)://host[:port]"
