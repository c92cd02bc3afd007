"""Layering: each room of src/veil imports only the rooms that its row of `LAYERS` allows.

The modules are parsed, not imported, so every dependency counts: `import veil.x` and
`from veil.x import y` at the top, inside functions and under TYPE_CHECKING (a lazy upward
import is still an upward dependency), relative imports, and strings that name a Veil module
exactly (PEP 562 export tables, `importlib`, `python -m veil.x`). A room is a first-level
name under `veil`: a package (`veil.wire`) or a module (`veil.errors`); `veil` itself is the
root package's `__init__`. A room may always import itself.

Whether importing a room stays light (no torch, web3...) is another question, checked by
tests/test_package.py and the rooms' own surface tests.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping, Set
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# The root package (VeilError, __version__), the error base, where a local network keeps its
# state, crash-safe private files, and the lifeline that ties a child process to its parent
# (home.py, durable.py and lifeline.py import no Veil module): anyone may use them.
BASE = frozenset({"veil", "errors", "home", "durable", "lifeline"})
# Formats and identities: the wire formats, then the keys and signed documents built on them.
BOTTOM = BASE | {"wire", "identity"}
# What a node runs and what a client checks: beside one another, except that the MPC parties
# run the engine's model layers (secret-shared).
MIDDLE = frozenset({"engine", "chain", "attest", "mpc"})
# The roles, each built from the floors below, never from one another.
ROLES = frozenset({"node", "relay", "client", "validator"})

LAYERS: dict[str, frozenset[str]] = {
    "veil": frozenset({"errors"}),
    "errors": frozenset(),
    "home": frozenset(),
    "durable": frozenset(),
    "lifeline": frozenset(),
    "wire": BASE,
    "identity": BASE | {"wire"},
    "engine": BOTTOM,
    "chain": BOTTOM,
    "attest": BOTTOM,  # the verifiers and the node policy a client applies
    "mpc": BOTTOM | {"engine"},
    "node": BOTTOM | MIDDLE,
    "relay": BOTTOM | {"chain"},  # a blind forwarder: no engine, attestation or MPC
    "client": BOTTOM | {"chain", "attest", "mpc"},  # the gateway is the MPC client; no engine
    "validator": BOTTOM | {"engine", "chain", "attest"},  # re-scores answers with the engine
    # The top floor: each command wires rooms together; veil.cli assembles the commands.
    "commands": BOTTOM | MIDDLE | ROLES,
    "cli": BASE | {"commands"},
    "__main__": frozenset({"cli"}),
}

_MODULE_NAME = re.compile(r"veil(\.\w+)+")


def _modules(src: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the `veil` package under `src`."""
    found = {}
    for path in sorted((src / "veil").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "veil"


def _imported(module: str, path: Path, known: Set[str]) -> Iterator[tuple[int, str]]:
    """(line, Veil module) for every Veil module that `module` (at `path`) names."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package, one level up per extra dot
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                # `from veil import errors` imports the module veil.errors; `from veil.x
                # import y` needs no such care (y stays in room x either way).
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in known else base
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _MODULE_NAME.fullmatch(node.value)
            and node.value in known
        ):
            yield node.lineno, node.value


def layering_violations(src: Path, layers: Mapping[str, Set[str]]) -> list[str]:
    """Every import in the `veil` package under `src` that `layers` does not allow, as
    `path:line: room imports module`; a room without a row is reported once."""
    modules = _modules(src)
    found: set[tuple[str, int, str]] = set()
    for module, path in modules.items():
        room = _room(module)
        where = path.relative_to(src).as_posix()
        if room not in layers:
            found.add((where, 0, f"room {room!r} has no row in the layering table"))
            continue
        for line, target in _imported(module, path, modules.keys()):
            if target != "veil" and not target.startswith("veil."):
                continue
            to = _room(target)
            if to != room and to not in layers[room]:
                found.add((where, line, f"{room} imports {target}"))
    return [
        f"{where}:{line}: {text}" if line else f"{where}: {text}"
        for where, line, text in sorted(found)
    ]


def test_rooms_import_only_what_the_table_allows() -> None:
    assert layering_violations(SRC, LAYERS) == []


def test_the_table_has_a_row_for_each_room_and_no_other() -> None:
    assert {_room(m) for m in _modules(SRC)} == set(LAYERS)
    assert set().union(*LAYERS.values()) <= set(LAYERS)


def test_the_table_has_no_cycle() -> None:
    """Rooms can be ordered so that each imports only rooms before it."""
    placed: set[str] = set()
    while len(placed) < len(LAYERS):
        ready = {room for room in set(LAYERS) - placed if LAYERS[room] - {room} <= placed}
        assert ready, f"a cycle among {sorted(set(LAYERS) - placed)}"
        placed |= ready


def _package(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_an_upward_import_is_reported(tmp_path: Path) -> None:
    """The checker on a small package: wire reaches up to node in each way an import can."""
    src = _package(
        tmp_path,
        {
            "veil/__init__.py": "from veil.errors import VeilError\n",
            "veil/errors.py": "class VeilError(Exception): ...\n",
            "veil/node/__init__.py": "",
            "veil/node/api.py": "from veil.wire import codec\nfrom veil import errors\n",
            "veil/wire/__init__.py": "from veil.wire.codec import encode\n",
            "veil/wire/codec.py": (
                "from __future__ import annotations\n"
                "from typing import TYPE_CHECKING\n"
                "from veil import errors, __version__\n"
                "if TYPE_CHECKING:\n"
                "    from veil.node.api import App\n"  # line 5
                "def encode() -> None:\n"
                "    import veil.node.api\n"  # line 7
                "    from ..node import api\n"  # line 8
                "    from . import codec\n"
                "LAZY = {'veil.node.api': ('App',), 'veil.wire.codec': ('encode',)}\n"  # line 10
            ),
        },
    )
    layers = {"veil": {"errors"}, "errors": set(), "wire": {"veil", "errors"}}
    assert layering_violations(src, {**layers, "node": {"veil", "errors", "wire"}}) == [
        "veil/wire/codec.py:5: wire imports veil.node.api",
        "veil/wire/codec.py:7: wire imports veil.node.api",
        "veil/wire/codec.py:8: wire imports veil.node.api",
        "veil/wire/codec.py:10: wire imports veil.node.api",
    ]
    # Without node's row the room itself is reported; so is the root importing upward.
    (src / "veil/__init__.py").write_text("from veil.wire import codec\n")
    assert [v for v in layering_violations(src, layers) if "codec.py" not in v] == [
        "veil/__init__.py:1: veil imports veil.wire.codec",
        "veil/node/__init__.py: room 'node' has no row in the layering table",
        "veil/node/api.py: room 'node' has no row in the layering table",
    ]
