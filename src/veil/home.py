"""Where a local Veil network keeps its state, and how its parts find one another.

A bottom module (no Veil imports): `veil up` writes `network.json` here while it runs;
`veil chat` and `veil status` read it to find the gateway and the chain.

The directory holds keys, the wallet, receipts and logs: it is private to the user
(directories 0700, files 0600). `make_private` makes an existing tree so (earlier versions
left it 0755/0644); `private_umask` keeps new files so.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["INFO_FILE", "default_data_dir", "load_network_info", "make_private", "private_umask"]

INFO_FILE = "network.json"


def default_data_dir() -> Path:
    """$VEIL_HOME, else ./.veil."""
    return Path(os.environ.get("VEIL_HOME", ".veil"))


def load_network_info(data_dir: Path | None = None) -> dict[str, Any]:
    """What the running `veil up` wrote: gateway, relay and chain URLs, node addresses."""
    path = (data_dir or default_data_dir()) / INFO_FILE
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        raise RuntimeError(
            f"no running network described at {path}: start one with `veil up`"
        ) from None


def make_private(data_dir: Path) -> None:
    """Create `data_dir` if needed, and take every permission of group and others off it and
    everything under it (0755 -> 0700, 0644 -> 0600). Symbolic links are not followed; what
    cannot be changed (not ours) is left as it is."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for root, dirs, files in os.walk(data_dir):
        for name in [".", *dirs, *files]:
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                mode = os.lstat(path).st_mode
                if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & 0o077:
                    os.chmod(path, stat.S_IMODE(mode) & 0o700)


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Umask 077 for the block: what is created meanwhile is the user's alone. The umask is
    the process's: other threads' new files are private too until the block ends."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)
