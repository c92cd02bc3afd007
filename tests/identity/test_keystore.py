"""Keystore: round trips, refusal of exposed / locked / broken files, load_or_create."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from veil.identity import (
    KeystoreLocked,
    KeystorePermissions,
    KeystoreUnreadable,
    NodeIdentity,
)

FAST = 2**10  # scrypt cost for tests only


def test_plain_keystore_round_trip_is_0600(tmp_path: Path) -> None:
    identity = NodeIdentity.generate()
    path = tmp_path / "sub" / "node.json"
    identity.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    assert NodeIdentity.load(path).address == identity.address


def test_encrypted_keystore_needs_its_passphrase(tmp_path: Path) -> None:
    identity = NodeIdentity.generate()
    path = tmp_path / "node.json"
    identity.save(path, "correct horse", scrypt_n=FAST)
    content = json.loads(path.read_text())
    assert "crypto" in content and "private_key" not in json.dumps(content)
    assert NodeIdentity.load(path, "correct horse").address == identity.address
    with pytest.raises(KeystoreLocked) as missing:
        NodeIdentity.load(path)
    assert missing.value.check == "keystore.passphrase"
    with pytest.raises(KeystoreLocked, match="wrong passphrase"):
        NodeIdentity.load(path, "battery staple")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606])
def test_group_or_other_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.json"
    NodeIdentity.generate().save(path)
    path.chmod(mode)
    with pytest.raises(KeystorePermissions) as err:
        NodeIdentity.load(path)
    assert err.value.check == "keystore.permissions"
    assert f"{mode:04o}" in str(err.value)


def test_missing_keystore_names_the_check(tmp_path: Path) -> None:
    with pytest.raises(KeystoreUnreadable) as err:
        NodeIdentity.load(tmp_path / "absent.json")
    assert err.value.check == "keystore.exists"


def test_symlink_and_directory_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "node.json"
    NodeIdentity.generate().save(target)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with pytest.raises(KeystoreUnreadable):
        NodeIdentity.load(link)
    folder = tmp_path / "dir"
    folder.mkdir(mode=0o700)
    with pytest.raises(KeystoreUnreadable, match="not a regular file"):
        NodeIdentity.load(folder)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\xff\xfe not utf8",
        b"not json",
        b"[1, 2]",
        b'{"hello": "world"}',
        b'{"veil_keystore": 1, "address": "0x00", "private_key": "zz"}',
        b'{"veil_keystore": 1}',
        b'{"crypto": {"cipher": "nope"}, "version": 3}',
        b"x" * (65 * 1024),
    ],
)
def test_garbage_keystores_are_typed_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "node.json"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises((KeystoreUnreadable, KeystoreLocked)):
        NodeIdentity.load(path, "pw")


def test_key_that_does_not_match_its_address_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    NodeIdentity.generate().save(path)
    content = json.loads(path.read_text())
    content["address"] = NodeIdentity.generate().address
    path.write_text(json.dumps(content))
    with pytest.raises(KeystoreUnreadable, match="does not match"):
        NodeIdentity.load(path)


def test_load_or_create_creates_once_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    first = NodeIdentity.load_or_create(path, "pw", scrypt_n=FAST)
    again = NodeIdentity.load_or_create(path, "pw", scrypt_n=FAST)
    assert first.address == again.address


def test_load_or_create_never_replaces_a_refused_keystore(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    NodeIdentity.generate().save(path)
    before = path.read_bytes()
    path.chmod(0o644)
    with pytest.raises(KeystorePermissions):
        NodeIdentity.load_or_create(path)
    assert path.read_bytes() == before


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty passphrase"):
        NodeIdentity.generate().save(tmp_path / "k.json", "")


def test_repr_and_errors_hide_the_key(tmp_path: Path) -> None:
    identity = NodeIdentity.generate()
    path = tmp_path / "node.json"
    identity.save(path)
    secret = json.loads(path.read_text())["private_key"][2:]
    assert secret not in repr(identity)
    path.chmod(0o644)
    with pytest.raises(KeystorePermissions) as err:
        NodeIdentity.load(path)
    assert secret not in str(err.value)
