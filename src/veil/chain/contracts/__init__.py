"""Veil's Vyper contracts and their compilation.

The `.vy` sources ship in the package; `compile_contract` compiles one with the installed
vyper at deploy time and caches the ABI and bytecode on disk, keyed by the source and
compiler version, so repeated deploys skip the compiler (about a second per contract).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["CONTRACT_NAMES", "CompiledContract", "compile_all", "compile_contract", "source_path"]

# Deployment order: each contract's constructor needs the ones before it.
CONTRACT_NAMES = ("VeilToken", "NodeRegistry", "TicketBroker", "Slasher", "ReleaseLog")


@dataclass(frozen=True)
class CompiledContract:
    """What deployment needs from the compiler."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str  # 0x-prefixed init code


def source_path(name: str) -> Path:
    """Path of the packaged `<name>.vy` source."""
    if name not in CONTRACT_NAMES:
        raise KeyError(f"unknown contract {name!r}")
    return Path(str(resources.files(__name__).joinpath(f"{name}.vy")))


def _cache_dir() -> Path:
    root = os.environ.get("VEIL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "veil"
    )
    return Path(root) / "vyper"


def compile_contract(name: str, *, use_cache: bool = True) -> CompiledContract:
    """Compile one contract (or load it from the cache)."""
    import vyper

    source = source_path(name).read_text()
    key = hashlib.sha256(f"{vyper.__version__}\0{name}\0{source}".encode()).hexdigest()[:32]
    cached = _cache_dir() / f"{name}-{key}.json"
    if use_cache and cached.is_file():
        try:
            data = json.loads(cached.read_text())
            return CompiledContract(name, data["abi"], data["bytecode"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recompiled below
    out = vyper.compile_code(source, contract_path=f"{name}.vy", output_formats=["abi", "bytecode"])
    compiled = CompiledContract(name, out["abi"], out["bytecode"])
    if use_cache:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"abi": compiled.abi, "bytecode": compiled.bytecode}))
            tmp.replace(cached)
        except OSError:
            pass  # caching is an optimisation; a read-only home still deploys
    return compiled


def compile_all(*, use_cache: bool = True) -> dict[str, CompiledContract]:
    """All contracts, in deployment order."""
    return {name: compile_contract(name, use_cache=use_cache) for name in CONTRACT_NAMES}
