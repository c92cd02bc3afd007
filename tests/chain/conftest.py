"""Fixtures for the contract tests: all five contracts deployed in titanoboa's in-process EVM.

titanoboa's pytest plugin rolls every fixture (and every hypothesis example) back to the
state before it; `ledger` also anchors explicitly, so each test starts from the fresh
session deployment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boa
import pytest
from eth_account.signers.local import LocalAccount

from support.chain import Ledger, deploy_ledger, make_account, observable_state


@pytest.fixture
def unchanged(ledger: Ledger) -> Callable[[str], Any]:
    """`with unchanged("reason"): call()` asserts that exact revert and no visible change."""
    from contextlib import contextmanager

    @contextmanager
    def check(reason: str) -> Iterator[None]:
        before = observable_state(ledger)
        with boa.reverts(reason):
            yield
        assert observable_state(ledger) == before, f"state changed by a revert ({reason!r})"

    return check


@pytest.fixture(scope="session")
def _session_ledger() -> Ledger:
    return deploy_ledger()


@pytest.fixture
def ledger(_session_ledger: Ledger) -> Iterator[Ledger]:
    with boa.env.anchor():
        yield _session_ledger


@pytest.fixture
def alice() -> LocalAccount:
    return make_account("alice")


@pytest.fixture
def bob() -> LocalAccount:
    return make_account("bob")


@pytest.fixture
def carol() -> LocalAccount:
    return make_account("carol")


@pytest.fixture
def node_op() -> str:
    return make_account("node").address


@pytest.fixture
def node2() -> str:
    return make_account("node2").address


@pytest.fixture
def validators() -> list[str]:
    return [make_account(f"validator-{i}").address for i in range(3)]
