"""Veil client: Oblivious HTTP transports for httpx (and so for the `openai` SDK)."""

from veil.client.errors import (
    ClientError,
    GatewayRefused,
    KeyConfigError,
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
    "KeyConfigError",
    "OhttpTransport",
    "RelayRefused",
    "RequestNotSendable",
    "ResponseRefused",
    "TruncatedResponse",
    "node_keys_url",
    "relay_keys_url",
    "relay_url_for",
]
