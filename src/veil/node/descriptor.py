"""The node's identity and its signed descriptor, kept current.

* `load_node_identity(path)`: the node account from its keystore (created 0600 when missing, as
  `veil.identity` writes it); without a path, a fresh in-memory account and a warning, since its
  receipts then name an address that is gone after a restart.
* `DescriptorIssuer`: issues the signed descriptor (address, endpoint, OHTTP key configs, served
  models with weight hashes, software claim, evidence, the MPC party the node hosts, if
  any, and its accepted token key ids) and issues it again when the OHTTP key list or the
  token key list changes (rotation) or once half its lifetime has passed, so a served
  descriptor never names stale keys and is never near expiry.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from veil import __version__
from veil.attest.producer import DevProducer, EvidenceProducer, issue_descriptor
from veil.identity import IdentityError, ModelEntry, MpcParty, NodeIdentity, SignedDescriptor
from veil.node.errors import NodeSetupError
from veil.node.keys import NodeKeys

__all__ = ["DescriptorIssuer", "load_node_identity", "software_claim"]

log = logging.getLogger(__name__)


def software_claim() -> bytes:
    """What a node without hardware measurement claims to run: sha256 of its Veil version."""
    return hashlib.sha256(f"veil-node {__version__}".encode()).digest()


def load_node_identity(path: Path | None, passphrase: str | None = None) -> NodeIdentity:
    """The keystore at `path` (created 0600 if missing); None: an in-memory identity."""
    if path is None:
        identity = NodeIdentity.generate()
        log.warning(
            "node identity %s is in memory only: its descriptor and receipts name an address "
            "that is lost on restart (pass --identity FILE to keep it)",
            identity.address,
        )
        return identity
    try:
        return NodeIdentity.load_or_create(Path(path), passphrase)
    except IdentityError as err:
        raise NodeSetupError(f"node identity: {err}") from err


class DescriptorIssuer:
    """Holds the node's current signed descriptor; `current()` re-issues it when needed."""

    def __init__(
        self,
        identity: NodeIdentity,
        keys: NodeKeys,
        *,
        endpoint: str,
        models: Sequence[ModelEntry],
        producer: EvidenceProducer | None = None,
        software: bytes | None = None,
        lifetime_s: int = 6 * 3600,
        clock: Callable[[], float] = time.time,
        mpc: MpcParty | None = None,
        token_keys: Callable[[], tuple[bytes, ...]] | None = None,
    ) -> None:
        self.identity = identity
        self._token_keys = token_keys or (lambda: ())
        self._keys = keys
        self._endpoint = endpoint
        self._models = tuple(models)
        self._producer = producer or DevProducer()
        self._software = software or software_claim()
        self._lifetime = lifetime_s
        self._clock = clock
        self._mpc = mpc
        self._lock = threading.Lock()
        self._signed: SignedDescriptor | None = None

    @property
    def kind(self) -> str:
        return self._producer.kind

    def _stale(self, signed: SignedDescriptor | None, now: int) -> bool:
        if signed is None:
            return True
        d = signed.descriptor
        return (
            d.ohttp_keys != self._keys.encoded_configs()
            or d.token_keys != self._token_keys()
            or now >= d.issued_at + self._lifetime // 2
        )

    def needs_issue(self) -> bool:
        """True when `current()` would issue a new descriptor (may block on a TDX quote)."""
        return self._stale(self._signed, int(self._clock()))

    def current(self) -> SignedDescriptor:
        """The descriptor to serve: the held one, or a fresh one if keys rotated or it aged."""
        with self._lock:
            now = int(self._clock())
            if self._stale(self._signed, now):
                self._signed = issue_descriptor(
                    self.identity,
                    self._producer,
                    endpoint=self._endpoint,
                    ohttp_keys=self._keys.encoded_configs(),
                    models=self._models,
                    software=self._software,
                    lifetime_s=self._lifetime,
                    now=now,
                    mpc=self._mpc,
                    token_keys=self._token_keys(),
                )
                log.info(
                    "issued descriptor for %s (%s evidence, valid until %d)",
                    self.identity.address,
                    self._producer.kind,
                    self._signed.descriptor.expires_at,
                )
            assert self._signed is not None  # issued above when there was none
            return self._signed
