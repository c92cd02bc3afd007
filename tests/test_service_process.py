"""Every service hardens its process: faulthandler on, recursion limit back to a safe one."""

from __future__ import annotations

import subprocess
import sys


def test_harden_process_caps_what_py_ecc_raises() -> None:
    code = (
        "import faulthandler, sys\n"
        "import py_ecc\n"
        "assert sys.getrecursionlimit() >= 100000\n"
        "from veil.commands.service import harden_process\n"
        "harden_process()\n"
        "import py_ecc  # a second import changes nothing\n"
        "print(sys.getrecursionlimit(), faulthandler.is_enabled())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1000", "True"]


def test_every_serving_command_hardens_its_process() -> None:
    from pathlib import Path

    import veil.commands

    root = Path(veil.commands.__file__).parent
    for name in ("chat.py", "node.py", "relay.py", "mpc.py"):
        assert "harden_process()" in (root / name).read_text(), name
