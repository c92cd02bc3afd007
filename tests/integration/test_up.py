"""The README's main command: `veil up` brings up the whole network, answers a first prompt
through the gateway, stops cleanly, and a second run reuses the same state."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def veil_up(data: Path, prompt: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "veil",
            "up",
            "--no-interactive",
            "--no-wait",
            "--data-dir",
            str(data),
            "--prompt",
            prompt,
            "--max-tokens",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_veil_up_runs_the_network_and_reuses_its_state(tmp_path: Path) -> None:
    prompt = "Name one ocean of the Earth."
    first = veil_up(tmp_path, prompt)
    assert "deployed Veil's contracts" in first and "release published" in first
    answer = first.split("assistant> ", 1)[1].split("\n", 1)[0].strip()
    assert len(answer) > 3
    assert re.search(r"answered by 0x[0-9a-fA-F]{40} \(attestation dev", first)
    assert "stopped." in first
    nodes = sorted(set(re.findall(r"node-[ab] (0x[0-9a-fA-F]{40})", first)))
    assert len(nodes) == 2
    for name in ("node-a", "node-b"):
        assert (tmp_path / name / "ohttp-keys.json").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / name / "identity.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "chain" / "state.json").exists()
    assert not (tmp_path / "network.json").exists()  # removed when the network stopped

    second = veil_up(tmp_path, "Name one mountain.")
    assert "found Veil's contracts from the last run" in second
    assert "release already approved" in second
    assert sorted(set(re.findall(r"node-[ab] (0x[0-9a-fA-F]{40})", second))) == nodes

    logs = {p.name: p.read_text() for p in (tmp_path / "logs").glob("*.log")}
    assert {"node-a.log", "node-b.log", "relay.log", "gateway.log"} <= set(logs)
    for name, text in logs.items():
        assert prompt not in text and answer not in text, name
