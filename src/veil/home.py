"""Where a local Veil network keeps its state, and how its parts find one another.

A bottom module (no Veil imports): `veil up` writes `network.json` here while it runs;
`veil chat` and `veil status` read it to find the gateway and the chain.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["INFO_FILE", "default_data_dir", "load_network_info"]

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
