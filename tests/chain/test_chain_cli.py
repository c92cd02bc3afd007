"""`veil chain up` / `veil chain info`, run as a user would (a subprocess, then Ctrl-C)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from veil.cli import app

pytestmark = pytest.mark.integration

VEIL = [sys.executable, "-c", "from veil.cli import app; app()"]


def test_chain_commands_are_registered() -> None:
    result = CliRunner().invoke(app, ["chain", "--help"])
    assert result.exit_code == 0
    assert "up" in result.output and "info" in result.output


def test_info_without_deployment_fails_cleanly(tmp_path) -> None:
    result = CliRunner().invoke(app, ["chain", "info", "--deployment", str(tmp_path / "none.json")])
    assert result.exit_code == 1
    assert "veil chain up" in result.output


def test_up_deploys_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "deployment.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [*VEIL, "chain", "up", "--deployment", str(out), "--mint", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while not out.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no deployment file after 60 s"
            time.sleep(0.2)
        data = json.loads(out.read_text())
        assert set(data["addresses"]) == {
            "VeilToken",
            "NodeRegistry",
            "TicketBroker",
            "Slasher",
            "ReleaseLog",
        }
        assert data["chain_id"] == 31337 and data["rpc_url"].startswith("http://127.0.0.1:")

        info = subprocess.run(
            [*VEIL, "chain", "info", "--deployment", str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert info.returncode == 0, info.stdout + info.stderr
        assert "supply 50.00 VEIL" in info.stdout  # 10 accounts x 5

        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, output
        assert "anvil stopped" in output
        # the devnet is really gone
        gone = subprocess.run(
            [*VEIL, "chain", "info", "--deployment", str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert gone.returncode == 1
        assert "cannot reach" in gone.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_up_against_an_existing_endpoint_then_approve_a_release(tmp_path: Path) -> None:
    from veil.chain.devnet import Devnet

    out = tmp_path / "deployment.json"
    runner = CliRunner()
    with Devnet() as devnet:
        result = runner.invoke(
            app, ["chain", "up", "--rpc-url", devnet.rpc_url, "--deployment", str(out)]
        )
        assert result.exit_code == 0, result.output
        assert json.loads(out.read_text())["rpc_url"] == devnet.rpc_url
        assert devnet.running  # not ours to stop

        approve = [
            "chain",
            "approve-release",
            "0x" + "ab" * 32,
            "cd" * 32,
            "--deployment",
            str(out),
        ]
        result = runner.invoke(app, [*approve, "--note", "smollm2 dev"])
        assert result.exit_code == 0, result.output
        assert "entry 0: approved" in result.output
        assert "already approved" in runner.invoke(app, approve).output
        info = runner.invoke(app, ["chain", "info", "--deployment", str(out)])
        assert info.exit_code == 0, info.output
        assert "smollm2 dev" in info.output and "abab" in info.output

        bad = runner.invoke(app, ["chain", "approve-release", "0x12", "cd" * 32])
        assert bad.exit_code == 2
        assert "32 bytes as 64 hex digits" in bad.output
        bad = runner.invoke(app, ["chain", "approve-release", "ab" * 32, "cd" * 65])
        assert bad.exit_code == 2
        assert "1 to 64 bytes" in bad.output
