"""The README's main command: `veil up` brings up the whole network, answers a first prompt
through the gateway, stops cleanly, and a second run reuses the same state; it restarts a
service that crashes, and nothing it started outlives it, even when it is SIGKILLed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from support.processes import descendants
from veil import lifeline
from veil.commands.chat import DEFAULT_MODEL

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
    open_this = [line for line in first.splitlines() if "open this" in line]
    assert open_this and re.search(r"open this: http://127\.0\.0\.1:\d+/ ", open_this[0])
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


def test_veil_up_restarts_a_crashed_service_and_dies_whole_when_killed(tmp_path: Path) -> None:
    """One long-running `veil up` over a data directory left world-readable by an older run:
    the tree is made private; the relay, SIGKILLed, is restarted and a chat still works; then
    `veil up` itself is SIGKILLed and every process under it (anvil, nodes, relay, gateway and
    their lifelines) is gone within the lifeline's grace period."""
    (tmp_path / "logs").mkdir(mode=0o755)
    (tmp_path / "logs" / "relay.log").write_text("an older run\n")
    (tmp_path / "logs" / "relay.log").chmod(0o644)
    tmp_path.chmod(0o755)
    command = [sys.executable, "-m", "veil", "up", "--no-interactive", "--prompt", ""]
    proc = subprocess.Popen(
        [*command, "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    lines = Lines(proc)
    try:
        lines.wait_for("The network is running", timeout=600)
        info = json.loads((tmp_path / "network.json").read_text())
        assert not_private(tmp_path) == {}

        relay = [p for p in descendants(proc.pid) if "relay serve" in cmdline(p)]
        relay = [p for p in relay if "lifeline" not in cmdline(p)]
        assert len(relay) == 1
        os.kill(relay[0], signal.SIGKILL)
        lines.wait_for("relay was killed by SIGKILL", timeout=30)
        assert "relay.log); restarting it in 1 s" in lines.text()
        lines.wait_for("relay is back", timeout=120)
        client = openai.OpenAI(base_url=info["gateway_url"] + "/v1", api_key="veil")
        answer = client.chat.completions.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
        )
        assert answer.choices[0].message.content
        assert "--- veil up: restarting relay ---" in (tmp_path / "logs" / "relay.log").read_text()

        tree = descendants(proc.pid)
        assert len(tree) >= 10  # 5 services (anvil, 2 nodes, relay, gateway), each a lifeline
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + lifeline.GRACE_S + 10
        while tree & alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {p: cmdline(p) for p in tree & alive()}
        assert not left, left
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        lines.close()


class Lines:
    """The output of a running process, read by a thread, for waiting on a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.seen.append(line)

    def text(self) -> str:
        return "".join(self.seen)

    def wait_for(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no {needle!r} from veil up:\n{self.text()}")
            time.sleep(0.2)

    def close(self) -> None:
        self.thread.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def not_private(root: Path) -> dict[str, str]:
    """Directories not 0700 and files not 0600 under `root` (links aside), with their mode."""
    wrong = {}
    for path in [root, *root.rglob("*")]:
        with contextlib.suppress(FileNotFoundError):  # a file a service has just removed
            mode = path.lstat().st_mode
            want = 0o700 if stat.S_ISDIR(mode) else 0o600
            if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) != want:
                wrong[str(path)] = oct(stat.S_IMODE(mode))
    return wrong


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive() -> set[int]:
    """Live processes (not zombies)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.add(int(entry.name))
            except (OSError, IndexError):
                continue
    return found
