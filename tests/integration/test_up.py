"""The README's main command: `veil up` brings up a node and a relay and streams a chat."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_veil_up_streams_an_answer_and_stops_cleanly(tmp_path: Path) -> None:
    prompt = "Name one ocean of the Earth."
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "veil",
            "up",
            "--no-interactive",
            "--data-dir",
            str(tmp_path),
            "--prompt",
            prompt,
            "--max-tokens",
            "24",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    answer = out.stdout.split("assistant> ", 1)[1].split("\n", 1)[0].strip()
    assert len(answer) > 3
    assert "stopped." in out.stdout
    assert (tmp_path / "node-a" / "ohttp-keys.json").stat().st_mode & 0o777 == 0o600
    relay_log = (tmp_path / "logs" / "relay.log").read_text()
    node_log = (tmp_path / "logs" / "node-a.log").read_text()
    assert "Finished server process" in relay_log and "Finished server process" in node_log
    for text in (prompt, answer):
        assert text not in relay_log and text not in node_log
