"""Catch tests that open files outside the repository.

A clone of Veil has nothing beside it, so a test that reads `../shared/...` (or any other
place that is not the repository, the interpreter's own files, the system or a temporary
directory) passes here and fails for every user. An audit hook sees every `open()` in the test
process; `tests/conftest.py` fails the test during which such an open happened.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _allowed_roots() -> tuple[str, ...]:
    roots = {
        str(REPO),
        tempfile.gettempdir(),
        "/tmp",
        "/dev",
        "/proc",
        "/sys",
        "/etc",
        "/usr",
        "/lib",
        "/lib64",
        "/var/tmp",
        "/run",
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        str(Path.home() / ".cache"),  # weights-hash cache, library caches
        *site.getsitepackages(),
        *(p for p in sysconfig.get_paths().values()),
    }
    return tuple(sorted(os.path.realpath(r) for r in roots if r))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class OutsideReads:
    """Records each opened path that lies beside the repository (what a clone lacks, like
    `../shared`), or under none of the allowed roots."""

    def __init__(self, roots: tuple[str, ...] | None = None, repo: Path = REPO) -> None:
        self.roots = roots if roots is not None else _allowed_roots()
        self.repo = os.path.realpath(repo)
        parent = os.path.dirname(self.repo)
        # The repository's own folder: where `../shared` would be. Unless that folder is an
        # allowed root itself (a clone right in /tmp): then its siblings are temp files.
        self.beside = None if parent in self.roots else parent
        self.seen: list[str] = []

    def outside(self, path: object) -> str | None:
        """The normalised path when it is outside every allowed root, else None."""
        if isinstance(path, int):
            return None  # an already open descriptor
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str | os.PathLike):
            return None
        full = os.path.normpath(os.path.abspath(os.fspath(path)))
        if _under(full, self.repo):
            return None
        if self.beside is not None and _under(full, self.beside):
            return full
        for root in self.roots:
            if full == root or full.startswith(root.rstrip("/") + "/"):
                return None
        return full

    def hook(self, event: str, args: tuple[object, ...]) -> None:
        if event == "open" and args:
            bad = self.outside(args[0])
            if bad is not None:
                self.seen.append(bad)

    def take(self) -> list[str]:
        seen, self.seen = self.seen, []
        return seen
