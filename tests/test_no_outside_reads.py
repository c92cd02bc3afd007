"""The guard in conftest.py: a test that opens a file outside the repository fails."""

from __future__ import annotations

import tempfile
from pathlib import Path

from support.outside_reads import REPO, OutsideReads


def test_sibling_of_the_repository_is_outside() -> None:
    repo = Path("/srv/clones/veil")  # a clone in a folder of its own, under an allowed root
    guard = OutsideReads(roots=("/srv", "/tmp"), repo=repo)
    shared = repo.parent / "shared" / "testdata" / "ohttp" / "rfc9458-appendix-a.json"
    assert guard.outside(shared) == str(shared)
    assert guard.outside(str(repo / ".." / "shared" / "x")) == "/srv/clones/shared/x"
    assert guard.outside(repo / "tests" / "data" / "x") is None
    assert guard.outside("/srv/elsewhere/x") is None  # an allowed root, not beside the clone


def test_a_clone_right_in_a_temp_root_leaves_its_siblings_to_the_roots() -> None:
    guard = OutsideReads(roots=("/tmp",), repo=Path("/tmp/veil"))
    assert guard.outside("/tmp/pytest-of-root/x") is None
    assert guard.outside("/elsewhere/x") == "/elsewhere/x"


def test_repository_temp_and_descriptors_are_inside() -> None:
    guard = OutsideReads()
    assert guard.outside(REPO / "tests" / "data" / "README.md") is None
    assert guard.outside(tempfile.gettempdir() + "/x") is None
    assert guard.outside(3) is None


def test_hook_records_an_outside_open() -> None:
    guard = OutsideReads(roots=(str(REPO),))
    guard.hook("open", (str(REPO.parent / "elsewhere.txt"), "r", 0))
    guard.hook("open", (str(REPO / "README.md"), "r", 0))
    guard.hook("os.listdir", ("/",))
    assert guard.take() == [str(REPO.parent / "elsewhere.txt")]
    assert guard.take() == []
