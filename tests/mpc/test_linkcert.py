"""The party's link certificate: made once with a 0600 key, reloaded, checked when given."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from veil.mpc.errors import MpcConfigError, ProtocolViolation
from veil.mpc.linkcert import CERT_FILE, KEY_FILE, LinkIdentity, cert_subject, check_cert_pem
from veil.node.config import NodeConfig
from veil.node.mpc import _cert_dir


def test_made_once_with_a_private_key_then_reloaded(tmp_path: Path) -> None:
    made = LinkIdentity.load_or_create(tmp_path / "link")
    assert stat.S_IMODE((tmp_path / "link" / KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "link").stat().st_mode) == 0o700
    again = LinkIdentity.load_or_create(tmp_path / "link")
    assert again.cert_pem == made.cert_pem and again.fingerprint == made.fingerprint
    other = LinkIdentity.load_or_create(tmp_path / "other")
    assert cert_subject(other.cert_pem) != cert_subject(made.cert_pem)  # TLS finds by name
    assert check_cert_pem(made.cert_pem) == made.cert_pem


def test_refuses_a_readable_key_and_a_mismatched_pair(tmp_path: Path) -> None:
    LinkIdentity.load_or_create(tmp_path / "a")
    LinkIdentity.load_or_create(tmp_path / "b")
    (tmp_path / "a" / KEY_FILE).chmod(0o644)
    with pytest.raises(MpcConfigError, match="other users"):
        LinkIdentity.load_or_create(tmp_path / "a")
    (tmp_path / "a" / KEY_FILE).chmod(0o600)
    (tmp_path / "a" / CERT_FILE).write_text((tmp_path / "b" / CERT_FILE).read_text())
    with pytest.raises(MpcConfigError, match="does not belong"):
        LinkIdentity.load_or_create(tmp_path / "a")


def test_check_cert_pem_takes_exactly_one_certificate(tmp_path: Path) -> None:
    pem = LinkIdentity.load_or_create(tmp_path / "c").cert_pem
    for bad in (None, "", "junk", pem + pem, pem.replace("MII", "XXX"), "x" * 10_000):
        with pytest.raises(ProtocolViolation):
            check_cert_pem(bad)


def test_node_keeps_the_link_certificate_beside_its_identity(tmp_path: Path) -> None:
    assert _cert_dir(NodeConfig()) is None  # in memory only: a fresh certificate per run
    ident = str(tmp_path / "node-a" / "identity.json")
    assert _cert_dir(NodeConfig(identity_path=ident)) == str(
        tmp_path / "node-a" / "identity-mpc-link"
    )
    assert _cert_dir(NodeConfig(identity_path=ident, mpc_cert_dir="/x")) == "/x"
