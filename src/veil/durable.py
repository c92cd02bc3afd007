"""Durable, private files: a node's key files, ticket queue, replay log and spent tokens, a
client's token wallet.

Each must survive a crash as either its old or its new content (never half-written) and be
readable by the node's account only, even when a crash left a temporary file with a looser
mode behind.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["append_private", "fsync_dir", "write_private"]


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (where the filesystem allows it)."""
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsync'd
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: written to a 0600 temporary file, fsync'd, renamed over."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a tmp file left by a crash keeps its mode otherwise
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def append_private(path: Path, data: bytes) -> None:
    """Append `data` to `path` (created 0600; a symbolic link is refused) and fsync before
    returning."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
