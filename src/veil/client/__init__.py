"""Veil client: Oblivious HTTP transports for httpx (and so for the `openai` SDK).

Node verification (`veil.client.policy`) and receipts (`veil.client.receipts`) are imported
from their modules, so importing the transports stays light.
"""

from veil.client.errors import (
    ClientError,
    GatewayRefused,
    HistoryLocked,
    KeyConfigError,
    NodeRejected,
    PolicyConfigError,
    ReceiptStoreError,
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
    "GatewayRefused",
    "HistoryLocked",
    "KeyConfigError",
    "NodeRejected",
    "OhttpTransport",
    "PolicyConfigError",
    "ReceiptStoreError",
    "RelayRefused",
    "RequestNotSendable",
    "ResponseRefused",
    "TruncatedResponse",
    "node_keys_url",
    "relay_keys_url",
    "relay_url_for",
]
