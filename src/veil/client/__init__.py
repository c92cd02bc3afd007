"""Veil client: Oblivious HTTP transports for httpx (and so for the `openai` SDK).

Node verification lives below the client, in `veil.attest.policy`; its names (`Policy`,
`PrivacyMode`, `verify_node`, `VerificationReport`...) are re-exported here but load on first
use (PEP 562), since the policy pulls in eth_account. Receipts (`veil.client.receipts`),
verified sessions (`veil.client.session`: `connect`, `verified_openai`) and the OHTTP clients of
MPC parties (`veil.client.mpc`: `mpc_parties`) are imported from their modules, so importing
the transports stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

_POLICY = (
    "NODE_STEPS",
    "LocalReleases",
    "Policy",
    "PrivacyMode",
    "Release",
    "ReleaseSource",
    "VerificationReport",
    "verify_node",
)

__all__ = [
    "NODE_STEPS",
    "AsyncOhttpTransport",
    "ClientError",
    "DescriptorUnavailable",
    "GatewayRefused",
    "HistoryLocked",
    "KeyConfigError",
    "LocalReleases",
    "NodeRejected",
    "OhttpTransport",
    "Policy",
    "PolicyConfigError",
    "PrivacyMode",
    "ReceiptRefused",
    "ReceiptStoreError",
    "RelayBroke",
    "RelayRefused",
    "Release",
    "ReleaseSource",
    "RequestNotSendable",
    "ResponseRefused",
    "TruncatedResponse",
    "VerificationReport",
    "node_keys_url",
    "relay_keys_url",
    "relay_url_for",
    "verify_node",
]


def __getattr__(name: str) -> Any:
    if name not in _POLICY:
        raise AttributeError(f"module 'veil.client' has no attribute {name!r}")
    value = getattr(importlib.import_module("veil.attest.policy"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from veil.attest.policy import (
        NODE_STEPS,
        LocalReleases,
        Policy,
        PrivacyMode,
        Release,
        ReleaseSource,
        VerificationReport,
        verify_node,
    )
