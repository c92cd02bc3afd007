"""The data directory is private: an older tree is fixed at start (directories 0700, files
0600), and what Veil's processes create there later is private from the start, whatever the
umask of the shell that started them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from veil import lifeline
from veil.commands.supervise import Service
from veil.home import make_private, private_umask


def mode(path: Path) -> int:
    return path.lstat().st_mode & 0o777


def test_an_older_tree_is_made_private(tmp_path: Path) -> None:
    home = tmp_path / "veil"
    (home / "logs").mkdir(parents=True)
    (home / "node-a").mkdir()
    files = [home / "network.json", home / "logs" / "relay.log", home / "node-a" / "keys.json"]
    for path in files:
        path.write_text("{}")
        path.chmod(0o644)
    (home / "logs").chmod(0o755)
    home.chmod(0o755)
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not Veil's")
    outside.chmod(0o644)
    (home / "link").symlink_to(outside)
    script = home / "tool.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)

    make_private(home)

    assert mode(home) == mode(home / "logs") == mode(home / "node-a") == 0o700
    assert {mode(p) for p in files} == {0o600}
    assert mode(script) == 0o700  # the owner keeps what it had
    assert mode(outside) == 0o644  # a link is not followed


def test_a_new_data_directory_is_private(tmp_path: Path) -> None:
    make_private(tmp_path / "a" / "veil")
    assert mode(tmp_path / "a" / "veil") == 0o700


def test_private_umask_is_restored(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with private_umask():
            (tmp_path / "made.json").write_text("{}")
            (tmp_path / "made").mkdir()
        (tmp_path / "after.json").write_text("{}")
    finally:
        os.umask(old)
    assert mode(tmp_path / "made.json") == 0o600 and mode(tmp_path / "made") == 0o700
    assert mode(tmp_path / "after.json") == 0o644


def test_children_create_private_files_and_logs(tmp_path: Path) -> None:
    """Under a lifeline, a child's files are 0600 though the parent's umask is 022; a
    service's log is 0600 too."""
    old = os.umask(0o022)
    try:
        code = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('x')"
        child = lifeline.popen([sys.executable, "-c", code, str(tmp_path / "state.json")])
        assert child.wait(30) == 0
        service = Service("relay", ["--help"], tmp_path / "logs" / "relay.log")
        service.start()
        assert service.proc is not None and service.proc.wait(60) == 0
        service.stop()
    finally:
        os.umask(old)
    assert mode(tmp_path / "state.json") == 0o600
    assert mode(tmp_path / "logs") == 0o700 and mode(tmp_path / "logs" / "relay.log") == 0o600
