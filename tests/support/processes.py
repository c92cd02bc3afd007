"""The process tree under a pid, read from /proc (tests that kill parents check it)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["descendants"]


def descendants(root: int) -> set[int]:
    """The processes under `root` (children, grandchildren...), from /proc."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent_of[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, IndexError, ValueError):
                continue
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parent_of.items() if ppid in frontier} - found
        found |= frontier
    return found
