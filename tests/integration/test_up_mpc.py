"""`veil up --mpc` with the real model: three nodes that each host an MPC party, and
`veil chat --mode mpc` through the gateway, which runs the MPC client over them.

Slow on purpose (the real SmolLM2 under ABY3 on 2 cores: ~20 s for the gateway to load the
model's public parts, ~75 s prefill, ~10 s per token), so the answer is one token long.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console

from support.net import Tap
from veil.commands.up import LocalNetwork, NetworkConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPT = "Name the capital of Norway."


def test_veil_up_mpc_and_veil_chat_mode_mpc(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from veil.cli import app

    taps: list[Tap] = []

    def through_tap(url: str) -> str:
        taps.append(Tap(url.rsplit(":", 1)[1]))
        return f"http://{taps[0].address}"

    settings = NetworkConfig(
        chain_port=0,
        node_ports=(0, 0, 0),
        relay_port=0,
        gateway_port=0,
        mpc=True,
        mpc_link_ports=(0, 0, 0),
    )
    net = LocalNetwork(tmp_path, settings, relay_proxy=through_tap)
    try:
        net.start(Console(quiet=True))
        assert net.node_names == ("node-a", "node-b", "node-c")
        assert len(set(net.node_addresses.values())) == 3 and len(net.node_links) == 3
        runner = CliRunner()
        status = runner.invoke(
            app, ["status", "--data-dir", str(net.data_dir)], env={"COLUMNS": "300"}
        )
        assert status.exit_code == 0, status.output
        assert status.output.count("aby3: smollm2-135m-instruct") == 3

        args = ["--gateway", net.gateway_url, "--mode", "mpc", "-p", PROMPT]
        chat = runner.invoke(app, ["chat", *args, "--max-tokens", "1", "--temperature", "0"])
        assert chat.exit_code == 0, chat.output
        line = next(x for x in chat.output.splitlines() if "computed by MPC parties" in x)
        assert sorted(re.findall(r"0x[0-9a-fA-F]{40}", line)) == sorted(net.node_addresses.values())
        assert "(aby3, attestation dev; no hardware isolation)" in line
        answer = chat.output.split("(model smollm2-135m-instruct:mpc)", 1)[1]
        answer = answer.split("computed by MPC parties", 1)[0].strip()
        assert answer  # one token of text

        wire = bytes(taps[0].data)
        assert PROMPT.encode() not in wire and b"capital of Norway" not in wire
        for log in (net.data_dir / "logs").glob("*.log"):
            text = log.read_text(errors="replace")
            assert PROMPT not in text and "capital of Norway" not in text, log.name
    finally:
        net.stop()
        for tap in taps:
            tap.close()
