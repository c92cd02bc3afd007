"""Node configuration (file + flags) and the OHTTP key file's safety checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from veil.node.config import NodeConfig, NodeConfigError
from veil.node.errors import NodeSetupError
from veil.node.keys import load_or_create_keys


def test_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node]\nport = 9001\nmax_batch = 4\nmodel_id = "m"\n')
    cfg = NodeConfig.load(path, port=9002, max_batch=None)
    assert (cfg.port, cfg.max_batch, cfg.model_id) == (9002, 4, "m")
    assert cfg.host == "127.0.0.1"  # loopback unless asked otherwise


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[node]\nprot = 1\n", "unknown config keys: prot"),
        ("[node]\nport = 0\n", "port"),
        ("[node]\nmax_batch = 0\n", "max_batch"),
        ("[node]\ndefault_max_tokens = 5000\n", "default_max_tokens"),
        ("[node\n", "cannot read config"),
    ],
)
def test_bad_config_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(NodeConfigError, match=message):
        NodeConfig.load(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(NodeConfigError, match="cannot read config"):
        NodeConfig.load(tmp_path / "absent.toml")


def test_keys_are_created_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "keys.json"
    keys = load_or_create_keys(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_or_create_keys(path)
    assert again.encoded_configs() == keys.encoded_configs()


def test_keys_readable_by_others_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    load_or_create_keys(path)
    os.chmod(path, 0o644)
    with pytest.raises(NodeSetupError, match="chmod 600"):
        load_or_create_keys(path)


def test_corrupt_key_file_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("{not json")
    os.chmod(path, 0o600)
    with pytest.raises(NodeSetupError, match="cannot read OHTTP keys"):
        load_or_create_keys(path)
