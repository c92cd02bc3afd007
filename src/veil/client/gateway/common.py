"""What both answer paths of the gateway share: its settings, the chain view and the
selection of verified nodes, and the error event that ends a broken stream."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from veil.attest.policy import PrivacyMode
from veil.client.discovery import ChainView, Discovery, DiscoveryConfig, Selection
from veil.client.gateway.credits import CreditConfig
from veil.client.gateway.guard import LOOPBACK_NAMES
from veil.client.payer import PayerConfig
from veil.errors import VeilError
from veil.wire.chat import sse
from veil.wire.http import OpenAIError, error_body

__all__ = ["GatewayConfig", "read_view", "select", "sse_error"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayConfig:
    max_body_bytes: int = 1 << 20  # request bodies above this get 413
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    payer: PayerConfig = field(default_factory=PayerConfig)
    # anonymous credits for anonymous/tee requests to nodes that sell tokens; None: tickets only
    # (off by default until the ticket-asserting network tests are adapted: see README)
    credits: CreditConfig | None = None
    mpc_protocol: str = "aby3"  # MPC sessions: three parties, honest majority, no dealer
    mpc_default_max_tokens: int = 32  # an :mpc request without max_tokens (~10 s per token)
    mpc_max_tokens: int = 256  # the largest max_tokens an :mpc request may ask for
    mpc_timeout_s: float = 600.0  # one party request at most (a real-model prefill: ~75 s)
    mpc_retry_after_s: int = 30  # the retry-after of a 503 mpc_parties_busy
    host_names: frozenset[str] = LOOPBACK_NAMES  # Host names answered (DNS rebinding guard)
    api_key: str | None = None  # when set, every request needs `Authorization: Bearer <key>`


def sse_error(message: str, code: str) -> bytes:
    """The event that ends a stream which cannot go on: the client sees why, never a cut."""
    return sse(error_body(message, type_="server_error", code=code))


async def read_view(discovery: Discovery) -> ChainView:
    """The chain view, read in a thread; a chain that cannot be read is a 503, since no node
    can be verified without it."""
    try:
        return await asyncio.to_thread(discovery.view)
    except VeilError as err:
        log.warning("chain unavailable: %s", type(err).__name__)
        raise OpenAIError(
            503,
            f"the chain cannot be read ({type(err).__name__}); no node can be verified",
            code="chain_unavailable",
            type_="server_error",
        ) from None


async def select(
    discovery: Discovery,
    mode: PrivacyMode,
    model_id: str | None,
    *,
    wait_s: float | None = None,
    enough: int | None = 1,
) -> Selection:
    """The nodes for `mode` and `model_id`: what discovery knows now, then the checks in
    flight awaited on the event loop (no thread waits) until `enough` candidates are at hand
    (None: all checks) or `wait_s` (default `check_deadline_s`) has passed. A node still being
    checked then is unavailable for this request; its check goes on for the next. So a
    request with a verified node at hand waits for no other node."""
    view = discovery.fresh_view() or await read_view(discovery)
    selection = discovery.start(mode, model_id, view, enough=enough)
    wait_s = discovery.config.check_deadline_s if wait_s is None else wait_s
    began = time.monotonic()
    while (left := selection.wait_left(began, wait_s, enough)) > 0:
        checks = [asyncio.wrap_future(f) for f in selection.pending.values()]
        await asyncio.wait(checks, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        discovery.settle(selection)
    return discovery.settle(selection, final=True)
