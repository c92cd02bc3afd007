"""Shared fixtures. The real model loads once per test session, only for tests that ask for it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from support.net import ServerThread
from support.outside_reads import OutsideReads

# Every open() in the test process is checked: nothing outside the repository (tests/data holds
# the vectors and quotes), the interpreter, the system or temporary directories.
OUTSIDE_READS = OutsideReads()
sys.addaudithook(OUTSIDE_READS.hook)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of tests/mpc and of a module named *mpc* is in the `mpc` tier."""
    for item in items:
        path = item.path
        if "mpc" in path.parts or "mpc" in path.name:
            item.add_marker(pytest.mark.mpc)


@pytest.fixture(autouse=True)
def _clean_veil_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No VEIL_* variable of the developer's shell changes what a test sees."""
    for name in [n for n in os.environ if n.startswith("VEIL_")]:
        monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _no_reads_outside_the_repository() -> Iterator[None]:
    OUTSIDE_READS.take()
    yield
    seen = OUTSIDE_READS.take()
    if seen:
        pytest.fail(f"the test opened files outside the repository: {sorted(set(seen))[:5]}")


@pytest.fixture(scope="session")
def loaded_model():  # type: ignore[no-untyped-def]
    from veil.engine import load_model

    return load_model()


@pytest.fixture(scope="session")
def builtin_engine(loaded_model):  # type: ignore[no-untyped-def]
    from veil.engine import Engine

    eng = Engine(loaded_model, max_batch=8, context_length=2048)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def engine(builtin_engine):  # type: ignore[no-untyped-def]
    """The reference (`builtin`) engine; tests/engine parametrizes over every backend."""
    return builtin_engine


@pytest.fixture(scope="session")
def ct2_model():  # type: ignore[no-untyped-def]
    """The packaged model converted for CTranslate2 (about a minute the first time, cached)."""
    from veil.engine.ct2 import load_ct2_model

    return load_ct2_model()


@pytest.fixture(scope="session")
def ct2_engine(ct2_model):  # type: ignore[no-untyped-def]
    from veil.engine.ct2 import Ct2Engine

    eng = Ct2Engine(ct2_model, max_batch=8, context_length=2048)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def node_server(engine) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    from veil.node.api import create_app
    from veil.node.config import NodeConfig

    app = create_app(engine, NodeConfig(max_tokens_limit=512, context_length=2048))
    with ServerThread(app) as server:
        yield server
