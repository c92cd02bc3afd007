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
        ('[node]\nengine = "llama"\n', "engine must be one of builtin, ctranslate2, upstream"),
        ('[node]\nengine = "upstream"\n', "upstream_url is needed"),
        ('[node]\nupstream_url = "http://h:1/v1"\n', "upstream_url is needed"),
        ('[node]\nengine = "upstream"\nupstream_url = "ftp://h"\n', "http:// or https://"),
    ],
)
def test_bad_config_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(NodeConfigError, match=message):
        NodeConfig.load(path)


def test_engine_from_file_and_flags(tmp_path: Path) -> None:
    assert NodeConfig().engine == "ctranslate2"  # the fast backend by default
    path = tmp_path / "node.toml"
    path.write_text(
        '[node]\nengine = "upstream"\nupstream_url = "http://127.0.0.1:8000/v1"\n'
        'upstream_model = "Qwen/Qwen3-8B"\nupstream_read_timeout_s = 30.0\n'
    )
    cfg = NodeConfig.load(path)
    assert (cfg.engine, cfg.upstream_url, cfg.upstream_model, cfg.upstream_read_timeout_s) == (
        "upstream",
        "http://127.0.0.1:8000/v1",
        "Qwen/Qwen3-8B",
        30.0,
    )
    assert NodeConfig.load(None, engine="builtin").engine == "builtin"


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


def test_payment_settings_from_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        '[node]\ndeployment_path = "d.json"\nticket_win_prob = 0.5\nfree = true\n'
        "ticket_face_value = 2000000000000000000\n"
    )
    cfg = NodeConfig.load(path, stake=150 * 10**18, free=None, tickets_path="t.jsonl")
    assert (cfg.deployment_path, cfg.ticket_win_prob, cfg.free) == ("d.json", 0.5, True)
    assert (cfg.ticket_face_value, cfg.stake, cfg.tickets_path) == (
        2 * 10**18,
        150 * 10**18,
        "t.jsonl",
    )
    assert NodeConfig().deployment_path is None and NodeConfig().auto_withdraw


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"ticket_win_prob": 0.0}, "ticket_win_prob"),
        ({"ticket_win_prob": 1.5}, "ticket_win_prob"),
        ({"ticket_face_value": 0}, "ticket_face_value"),
        ({"stake": -1}, "stake"),
        ({"redeem_interval_s": 0}, "redeem_interval_s"),
    ],
)
def test_bad_payment_settings_are_named(override: dict, message: str) -> None:
    with pytest.raises(NodeConfigError, match=message):
        NodeConfig.load(None, **override)


def test_cli_amounts() -> None:
    import typer

    from veil.commands.node import parse_amount

    assert parse_amount("150VEIL") == 150 * 10**18
    assert parse_amount("0.5 veil") == 5 * 10**17
    assert parse_amount("1_000") == 1000
    assert parse_amount(None) is None
    for bad in ("-1", "1e-30VEIL", "lots", "0"):
        with pytest.raises(typer.BadParameter):
            parse_amount(bad)


def test_serve_help_lists_the_payment_flags() -> None:
    from typer.testing import CliRunner

    from veil.commands.node import node_app

    out = CliRunner().invoke(node_app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--chain", "--stake", "--free", "--face-value", "--win-prob", "--tickets"):
        assert flag in out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"mpc_link": "7101"}, "mpc_link"),
        ({"mpc_link": "127.0.0.1:x"}, "mpc_link"),
        ({"mpc_session_timeout_s": 0}, "mpc_session_timeout_s"),
        ({"mpc_link_timeout_s": -1}, "mpc_link_timeout_s"),
    ],
)
def test_bad_mpc_settings_are_named(override: dict, message: str) -> None:
    with pytest.raises(NodeConfigError, match=message):
        NodeConfig.load(None, **override)


def test_mpc_party_settings_and_flags(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from veil.commands.node import node_app
    from veil.node.mpc import build_party

    path = tmp_path / "node.toml"
    path.write_text('[node]\nmpc_link = "127.0.0.1:7101"\nmpc_protocol = "aby3"\n')
    cfg = NodeConfig.load(path, mpc_session_timeout_s=30.0)
    assert (cfg.mpc_link, cfg.mpc_session_timeout_s) == ("127.0.0.1:7101", 30.0)
    assert NodeConfig().mpc_link is None  # no party unless asked for
    with pytest.raises(NodeSetupError, match="unknown protocol"):
        build_party(NodeConfig(mpc_link="127.0.0.1:7101", mpc_protocol="nope"), warm=False)
    with pytest.raises(NodeSetupError, match="unknown model source"):
        build_party(NodeConfig(mpc_link="127.0.0.1:7101", mpc_model="big"), warm=False)
    out = CliRunner().invoke(node_app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--mpc-link", "--mpc-protocol", "--mpc-session-timeout", "--mpc-link-timeout"):
        assert flag in out


def test_attestation_setting_is_checked() -> None:
    assert NodeConfig().attestation == "dev"
    assert NodeConfig(attestation="tdx").attestation == "tdx"
    with pytest.raises(NodeConfigError, match="attestation must be dev or tdx"):
        NodeConfig(attestation="sgx")


def test_tdx_attestation_outside_a_td_refuses_to_start_before_loading_the_model() -> None:
    """Fails closed: no silent fallback to dev evidence, and no 20 s model load first."""
    from pathlib import Path

    from typer.testing import CliRunner

    from veil.cli import app

    if Path("/sys/kernel/config/tsm/report").exists():
        pytest.skip("this machine has a configfs-tsm report interface")
    out = CliRunner().invoke(app, ["node", "serve", "--attestation", "tdx"], env={"COLUMNS": "200"})
    assert out.exit_code == 2
    assert "--attestation tdx" in out.output and "configfs-tsm" in out.output
    assert "loading model" not in out.output and "model " not in out.output
