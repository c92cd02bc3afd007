"""The guard in conftest.py: a test that opens a file outside the repository fails."""

from __future__ import annotations

import tempfile

from support.outside_reads import REPO, OutsideReads


def test_sibling_of_the_repository_is_outside() -> None:
    guard = OutsideReads()
    shared = REPO.parent / "shared" / "testdata" / "ohttp" / "rfc9458-appendix-a.json"
    assert guard.outside(shared) == str(shared)
    assert guard.outside(str(REPO / ".." / "shared" / "x")) == str(REPO.parent / "shared" / "x")


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
