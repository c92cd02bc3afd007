"""Revert reasons and web3 failures map to typed chain errors."""

import re

import pytest
import requests
from eth_abi import encode
from web3.exceptions import ContractLogicError, ProviderConnectionError

from veil.chain.contracts import CONTRACT_NAMES, source_path
from veil.chain.errors import (
    REVERT_REASONS,
    ChainError,
    ChainUnavailable,
    ContractRevert,
    TicketExpired,
    TicketReplayed,
    TransactionFailed,
    Unauthorized,
    revert_error,
)
from veil.chain.transact import map_web3_error, revert_reason
from veil.errors import VeilError

_ASSERT_REASON = re.compile(r'assert\b[^"\n]*(?:\n[^"\n]*)?,\s*\(?\s*"([^"]+)"')


def contract_reasons() -> set[str]:
    found: set[str] = set()
    for name in CONTRACT_NAMES:
        found |= set(_ASSERT_REASON.findall(source_path(name).read_text()))
    return found


def error_data(reason: str) -> str:
    return "0x08c379a0" + encode(["string"], [reason]).hex()


def test_every_contract_reason_is_mapped() -> None:
    reasons = contract_reasons()
    assert len(reasons) > 50  # the parser found the asserts
    assert reasons - REVERT_REASONS.keys() == set(), "unmapped revert reasons"
    assert REVERT_REASONS.keys() - reasons == set(), "mapped reasons no contract raises"


def test_every_reason_has_a_specific_class() -> None:
    for reason, cls in REVERT_REASONS.items():
        assert issubclass(cls, ContractRevert) and cls is not ContractRevert, reason
        err = revert_error(reason, "f")
        assert isinstance(err, ChainError) and isinstance(err, VeilError)
        assert err.reason == reason and err.function == "f"


def test_unknown_reason_is_a_plain_contract_revert() -> None:
    err = revert_error("something new")
    assert type(err) is ContractRevert
    assert "something new" in str(err)


@pytest.mark.parametrize(
    ("exc", "expected", "reason"),
    [
        (ContractLogicError("execution reverted: ticket expired"), TicketExpired, "ticket expired"),
        (
            ContractLogicError("execution reverted", data=error_data("ticket already redeemed")),
            TicketReplayed,
            "ticket already redeemed",
        ),
        (
            ContractLogicError("whatever", data={"data": error_data("not governance")}),
            Unauthorized,
            "not governance",
        ),
    ],
)
def test_contract_logic_errors_map_by_reason(exc, expected, reason) -> None:
    assert revert_reason(exc) == reason
    mapped = map_web3_error(exc, "redeemWinningTicket")
    assert type(mapped) is expected
    assert mapped.reason == reason


def test_revert_without_reason() -> None:
    mapped = map_web3_error(ContractLogicError("execution reverted", data="0x"), "vote")
    assert type(mapped) is TransactionFailed


@pytest.mark.parametrize(
    "exc",
    [
        requests.exceptions.ConnectionError("refused"),
        ProviderConnectionError("down"),
        requests.exceptions.ReadTimeout("slow"),
    ],
)
def test_transport_failures_are_chain_unavailable(exc) -> None:
    assert isinstance(map_web3_error(exc), ChainUnavailable)


def test_other_failures_are_transaction_failed() -> None:
    assert isinstance(map_web3_error(RuntimeError("boom"), "x"), TransactionFailed)
    err = ChainUnavailable("already mapped")
    assert map_web3_error(err) is err
