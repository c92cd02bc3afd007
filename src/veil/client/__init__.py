"""Veil client: Oblivious HTTP transports for httpx (and so for the `openai` SDK).

Node verification (`veil.client.policy`), receipts (`veil.client.receipts`), verified
sessions (`veil.client.session`: `connect`, `verified_openai`) and the OHTTP clients of MPC
parties (`veil.client.mpc`: `mpc_parties`) are imported from their modules, so importing the
transports stays light.
"""

from veil.client.errors import (
    ClientError,
    DescriptorUnavailable,
    GatewayRefused,
    HistoryLocked,
    KeyConfigError,
    NodeRejected,
    PolicyConfigError,
    ReceiptRefused,
    ReceiptStoreError,
    RelayBroke,
    RelayRefused,
    RequestNotSendable,
    ResponseRefused,
    TruncatedResponse,
)
from veil.client.transport import (
    AsyncOhttpTransport,
    OhttpTransport,
    node_keys_url,
    relay_keys_url,
    relay_url_for,
)

__all__ = [
    "AsyncOhttpTransport",
    "ClientError",
    "DescriptorUnavailable",
    "GatewayRefused",
    "HistoryLocked",
    "KeyConfigError",
    "NodeRejected",
    "OhttpTransport",
    "PolicyConfigError",
    "ReceiptRefused",
    "ReceiptStoreError",
    "RelayBroke",
    "RelayRefused",
    "RequestNotSendable",
    "ResponseRefused",
    "TruncatedResponse",
    "node_keys_url",
    "relay_keys_url",
    "relay_url_for",
]
