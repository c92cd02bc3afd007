"""The on-chain ReleaseLog as the client policy's release source.

`veil.attest.policy` asks a `ReleaseSource` one question, `is_approved(model_hash,
measurement)`; `ChainReleases` answers it from the chain, in place of a local file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from veil.chain.client import ChainClient

__all__ = ["ChainReleases"]


class ChainReleases:
    """Approved (model hash, measurement) pairs, read live from the ReleaseLog.

    Fails closed: sizes the log cannot hold are simply not approved, and chain errors
    (`veil.chain.errors.ChainError`) propagate rather than read as "approved".
    """

    def __init__(self, client: ChainClient) -> None:
        self._client = client

    def is_approved(self, model_hash: bytes, measurement: bytes) -> bool:
        if len(model_hash) != 32 or not 1 <= len(measurement) <= 64:
            return False
        return self._client.is_release_approved(bytes(model_hash), bytes(measurement))
