"""Sending transactions through web3 and turning web3's failures into chain errors.

Every write goes: build (which estimates gas, so a revert surfaces here with its reason)
-> sign locally -> send raw -> wait for the receipt. web3 and requests exceptions never
leave this module unmapped.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

from veil.chain.errors import (
    ChainError,
    ChainUnavailable,
    TransactionFailed,
    revert_error,
)
from veil.chain.types import TxReceipt
from veil.wire.boundedjson import check_depth

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from web3 import Web3
    from web3.types import TxParams

__all__ = ["connect", "map_web3_error", "revert_reason", "send_transaction"]

_ERROR_STRING_SELECTOR = "08c379a0"  # Error(string)
_REVERT_PREFIX = re.compile(r"^(?:execution reverted:?\s*)", re.IGNORECASE)


def _decode_error_string(data: str) -> str | None:
    hexdata = data[2:] if data.startswith("0x") else data
    if not hexdata.startswith(_ERROR_STRING_SELECTOR):
        return None
    try:
        from eth_abi import decode

        (reason,) = decode(["string"], bytes.fromhex(hexdata[8:]))
    except Exception:  # malformed revert data: fall back to the message
        return None
    return str(reason)


def revert_reason(exc: BaseException) -> str | None:
    """The contract's revert string inside a web3 ContractLogicError, if there is one."""
    data = getattr(exc, "data", None)
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str):
        decoded = _decode_error_string(data)
        if decoded is not None:
            return decoded
    message = getattr(exc, "message", None) or (str(exc.args[0]) if exc.args else "")
    reason = _REVERT_PREFIX.sub("", message).strip()
    if not reason or reason.lower() in {"execution reverted", "revert"}:
        return None
    return reason


def map_web3_error(exc: BaseException, function: str | None = None) -> ChainError:
    """Translate an exception raised by web3 (or its HTTP layer) into a ChainError."""
    import requests
    from web3.exceptions import ContractLogicError, ProviderConnectionError, TimeExhausted

    if isinstance(exc, ChainError):
        return exc
    if isinstance(exc, ContractLogicError):
        reason = revert_reason(exc)
        if reason is not None:
            return revert_error(reason, function)
        return TransactionFailed(f"{function or 'call'} reverted without a reason")
    if isinstance(exc, ProviderConnectionError | requests.exceptions.ConnectionError):
        return ChainUnavailable(f"cannot reach the chain RPC endpoint: {exc}")
    if isinstance(exc, requests.exceptions.Timeout | TimeExhausted):
        return ChainUnavailable(f"the chain RPC endpoint timed out: {exc}")
    return TransactionFailed(f"{function or 'transaction'} failed: {exc}")


# JSON-RPC answers nest a few levels (logs, receipts); deeper is not an answer but an attack.
MAX_RPC_JSON_DEPTH = 32


def _bounded_provider(rpc_url: str, timeout: float) -> Any:
    """An HTTP provider whose answers are depth-checked before web3 decodes them: the RPC
    endpoint is outside input too, and the C JSON decoder recurses once per level."""
    from web3 import HTTPProvider

    class BoundedHTTPProvider(HTTPProvider):
        @staticmethod
        def decode_rpc_response(raw_response: bytes) -> Any:
            if not check_depth(raw_response, limit=MAX_RPC_JSON_DEPTH):
                raise ChainUnavailable(
                    f"the chain RPC answer nests deeper than {MAX_RPC_JSON_DEPTH} levels"
                )
            return HTTPProvider.decode_rpc_response(raw_response)

    return BoundedHTTPProvider(rpc_url, request_kwargs={"timeout": timeout})


def connect(rpc_url: str, timeout: float = 30.0) -> Web3:
    """A Web3 over HTTP that has answered eth_chainId (else ChainUnavailable)."""
    from web3 import Web3

    w3 = Web3(_bounded_provider(rpc_url, timeout))
    try:
        w3.eth.chain_id  # noqa: B018  (a cheap liveness probe)
    except Exception as exc:
        raise ChainUnavailable(f"cannot reach the chain RPC endpoint {rpc_url}: {exc}") from exc
    return w3


def send_transaction(
    w3: Web3,
    account: LocalAccount,
    call: Any,
    *,
    function: str,
    gas: int | None = None,
    receipt_timeout: float = 120.0,
) -> tuple[TxReceipt, Any]:
    """Build, sign and send a contract call (or constructor); wait for success.

    Returns our receipt and web3's raw receipt (for event decoding).
    """
    tx: dict[str, Any] = {"from": account.address, "chainId": w3.eth.chain_id}
    try:
        tx["nonce"] = w3.eth.get_transaction_count(account.address, "pending")
        if gas is not None:
            tx["gas"] = gas
        built = call.build_transaction(tx)  # estimates gas: a revert raises here
        if gas is None:
            built["gas"] = int(built["gas"] * 1.2) + 10_000  # state may move before mining
        signed = account.sign_transaction(built)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        raw = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=receipt_timeout)
    except Exception as exc:
        raise map_web3_error(exc, function) from exc
    if raw["status"] != 1:
        raise _failed_receipt_error(w3, built, raw, function)
    receipt = TxReceipt(
        tx_hash=raw["transactionHash"].to_0x_hex(),
        block_number=int(raw["blockNumber"]),
        gas_used=int(raw["gasUsed"]),
    )
    return receipt, raw


def _failed_receipt_error(w3: Web3, built: dict[str, Any], raw: Any, function: str) -> ChainError:
    """A mined-but-reverted transaction: replay it as a call to recover the reason."""
    replay = {k: built[k] for k in ("from", "to", "data", "value") if k in built}
    try:
        w3.eth.call(cast("TxParams", replay), block_identifier=raw["blockNumber"] - 1)
    except Exception as exc:
        mapped = map_web3_error(exc, function)
        if not isinstance(mapped, TransactionFailed):
            return mapped
    return TransactionFailed(f"{function} reverted on-chain (tx {raw['transactionHash'].hex()})")
