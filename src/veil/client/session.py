"""A verified session with one node: check the node before sending, check every answer after.

`connect(relay_url, node_id, mode=...)`:

1. fetches the node's signed descriptor through the relay (`GET /relay/{node_id}/descriptor`,
   so the node does not see who asks);
2. verifies it under the mode's policy (`veil.attest.policy.verify_node`; `anonymous` accepts
   `dev` nodes and then carries the "no hardware isolation" warning; `tee` refuses them);
3. pins the OHTTP keys to the descriptor's (`report.key_check()`), so nothing is sealed to a
   key the verified node did not list; when the node rotates its keys (or the descriptor
   nears expiry) the descriptor is fetched and verified again, and must name the same address;
4. wraps the OHTTP transport in a receipt check (`ReceiptCheckingTransport`): every chat
   answer must end with a receipt signed by the descriptor's address over the digest of the
   encapsulated request this client sent, the answer text it received, and the model's weights
   hash. A whole answer whose receipt fails or is missing raises `ReceiptRefused` and is never
   returned; a streamed one raises `ReceiptRefused` at its end, before `[DONE]` is passed on.
   A request that carries a payment ticket states its id in the request extension
   `TICKET_ID_EXTENSION`; the receipt must then name exactly that ticket (check `ticket_id`),
   since a receipt naming another ticket, or none, does not bind the payment to the answer.

Verified receipts go to a `ReceiptStore` when one is given (prompt and answer only when the
store's history is on, and then encrypted) and to `session.receipts`. The receipt checker
lives in `veil.client.answers` (its names are re-exported here).

A descriptor fetch has short, separate connect and read deadlines and an overall one
(`FETCH_TIMEOUT`, `FETCH_DEADLINE_S`; the gateway's discovery passes its own), so a node that
accepts TCP and never answers, or trickles bytes, costs seconds, not a user's wait.

    session = connect("http://127.0.0.1:8780", "node-a")
    client = session.openai()          # the unchanged openai SDK
    client.chat.completions.create(model="smollm2-135m-instruct", messages=[...])
    session.receipts[-1]               # the verified receipt of that answer
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from veil.attest.errors import KeyConfigError, NodeRejected
from veil.attest.policy import Policy, PrivacyMode, VerificationReport, verify_node
from veil.client.answers import (
    AsyncReceiptCheckingTransport,
    ReceiptChecker,
    ReceiptCheckingTransport,
    VerifiedReceipt,
)
from veil.client.errors import DescriptorUnavailable
from veil.client.receipts import ReceiptStore
from veil.client.transport import (
    AsyncOhttpTransport,
    OhttpTransport,
    relay_keys_url,
    relay_url_for,
)
from veil.identity.descriptor import MAX_DESCRIPTOR_BYTES
from veil.wire.http import INVALID_BASE_URL, MEDIA_DESCRIPTOR, TICKET_ID_EXTENSION
from veil.wire.ohttp import KeyConfig

__all__ = [
    "FETCH_DEADLINE_S",
    "FETCH_TIMEOUT",
    "INVALID_BASE_URL",
    "TICKET_ID_EXTENSION",
    "AsyncReceiptCheckingTransport",
    "ReceiptChecker",
    "ReceiptCheckingTransport",
    "VeilSession",
    "VerifiedReceipt",
    "connect",
    "fetch_descriptor",
    "open_session",
    "relay_descriptor_url",
    "verified_openai",
]

log = logging.getLogger(__name__)

# A descriptor is a few kilobytes: a relay (or node behind it) this slow is failing.
FETCH_TIMEOUT = httpx.Timeout(connect=2.0, read=5.0, write=5.0, pool=2.0)
FETCH_DEADLINE_S = 10.0  # a whole fetch at most, however its bytes trickle in


def relay_descriptor_url(relay_url: str, node_id: str) -> str:
    """The node's signed descriptor fetched through the relay."""
    return relay_url_for(relay_url, node_id) + "/descriptor"


def fetch_descriptor(
    relay_url: str,
    node_id: str,
    *,
    transport: httpx.BaseTransport | None = None,
    timeout: httpx.Timeout | float = FETCH_TIMEOUT,
    deadline_s: float = FETCH_DEADLINE_S,
) -> bytes:
    """The descriptor bytes as the relay passed them on (verify them before any use).

    `transport` reaches the relay and stays open (a caller fetching often passes one: each
    new one costs a TLS context, tens of milliseconds of CPU). `timeout` bounds each step
    (connect, each read...); `deadline_s` the whole fetch, since a byte a second never trips
    a read timeout."""
    give_up = time.monotonic() + deadline_s
    # Built bare, so the HTTP client adds none of its default headers (user-agent...).
    request = httpx.Request(
        "GET", relay_descriptor_url(relay_url, node_id), headers={"accept": MEDIA_DESCRIPTOR}
    )
    http = httpx.Client(
        transport=transport or httpx.HTTPTransport(), timeout=timeout, follow_redirects=False
    )
    try:
        response = http.send(request, stream=True)
        try:
            if response.status_code != 200:
                raise DescriptorUnavailable(
                    f"descriptor fetch answered HTTP {response.status_code}"
                )
            data = bytearray()
            for piece in response.iter_bytes():
                data += piece
                if len(data) > MAX_DESCRIPTOR_BYTES:
                    raise DescriptorUnavailable("descriptor too large")
                if time.monotonic() > give_up:
                    raise DescriptorUnavailable(f"descriptor fetch took over {deadline_s} s")
        finally:
            response.close()
    except httpx.HTTPError as err:
        raise DescriptorUnavailable(f"descriptor fetch failed: {type(err).__name__}") from None
    finally:
        if transport is None:
            http.close()
    return bytes(data)


@dataclass
class VeilSession:
    """One verified node: its report, a pinned transport, and the receipts of its answers."""

    relay_url: str
    node_id: str
    report: VerificationReport
    checker: ReceiptChecker
    policy: Policy
    model_id: str | None = None
    transport_kwargs: dict[str, Any] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    refresh_margin_s: int = 60  # verify again this long before the descriptor expires
    # the deadlines of the descriptor fetches `reverify` makes
    fetch_timeout: httpx.Timeout = field(default_factory=lambda: FETCH_TIMEOUT)

    def __post_init__(self) -> None:
        self.checker.before_send = self._before_send

    def reverify(self, data: bytes | None = None) -> VerificationReport:
        """Verify the descriptor again (keys rotated, or it is about to expire): `data`, or
        fetched now.

        The node must keep its address: receipts are checked against it, and another
        address is another node (`NodeRejected`, check `identity`).
        """
        if data is None:
            data = fetch_descriptor(
                self.relay_url,
                self.node_id,
                transport=self.transport_kwargs.get("outer"),
                timeout=self.fetch_timeout,
            )
        report = verify_node(data, self.policy, int(self.clock()), model_id=self.model_id)
        if report.address != self.address:
            raise NodeRejected(
                f"the node's descriptor now names {report.address}, not {self.address}",
                check="identity",
                report=report,
            )
        self.report = report
        self.checker.models = {m.model_id: m.weights_hash for m in report.approved_models}
        log.info("node %s verified again", report.address)
        return report

    def _before_send(self) -> None:
        assert self.report.descriptor is not None
        if self.clock() >= self.report.descriptor.expires_at - self.refresh_margin_s:
            self.reverify()

    def _key_check(self, configs: tuple[KeyConfig, ...]) -> None:
        """Keys must be in the verified descriptor; on a miss, verify the node again once."""
        try:
            self.report.key_check(clock=self.clock)(configs)
        except KeyConfigError:
            self.reverify()
            self.report.key_check(clock=self.clock)(configs)

    @property
    def address(self) -> str:
        assert self.report.address is not None
        return self.report.address

    @property
    def attestation_kind(self) -> str:
        assert self.report.descriptor is not None
        return self.report.descriptor.evidence.kind

    @property
    def hardware_isolated(self) -> bool:
        return self.report.hardware_isolated

    @property
    def receipts(self) -> list[VerifiedReceipt]:
        return self.checker.receipts

    def describe(self) -> str:
        """One line for a terminal: address, attestation kind, isolation."""
        isolation = "hardware isolation" if self.hardware_isolated else "no hardware isolation"
        return f"node {self.address}, attestation {self.attestation_kind} ({isolation})"

    def _key_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.transport_kwargs)
        kwargs.setdefault("keys_url", relay_keys_url(self.relay_url, self.node_id))
        kwargs["key_configs"] = self.report.key_configs()
        kwargs["key_check"] = self._key_check
        return kwargs

    def transport(self, *, timeout: httpx.Timeout | None = None) -> ReceiptCheckingTransport:
        """The sync transport; `timeout` replaces the session's for the relay hop (an MPC
        party answers one request in minutes)."""
        kwargs = self._key_kwargs()
        if timeout is not None:
            kwargs["timeout"] = timeout
        inner = OhttpTransport(self.relay_url, self.node_id, **kwargs)
        return ReceiptCheckingTransport(inner, self.checker)

    def async_transport(
        self, *, outer: httpx.AsyncBaseTransport | None = None
    ) -> AsyncReceiptCheckingTransport:
        """The async transport; `outer` reaches the relay (the session's `outer`, if any, is a
        sync transport for descriptor fetches and cannot serve here)."""
        kwargs = self._key_kwargs()
        if outer is not None:
            kwargs["outer"] = outer
        inner = AsyncOhttpTransport(self.relay_url, self.node_id, **kwargs)
        return AsyncReceiptCheckingTransport(inner, self.checker)

    def openai(self):
        """An `openai.OpenAI` over this session: sealed, key-pinned, receipt-checked."""
        import openai

        return openai.OpenAI(
            base_url=INVALID_BASE_URL,
            api_key="veil",  # dropped by the transport; the SDK insists on one
            max_retries=0,
            http_client=httpx.Client(transport=self.transport()),
        )

    def async_openai(self):
        import openai

        return openai.AsyncOpenAI(
            base_url=INVALID_BASE_URL,
            api_key="veil",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=self.async_transport()),
        )


def connect(
    relay_url: str,
    node_id: str,
    *,
    mode: PrivacyMode | str = PrivacyMode.ANONYMOUS,
    policy: Policy | None = None,
    model_id: str | None = None,
    store: ReceiptStore | None = None,
    on_receipt: Callable[[VerifiedReceipt], None] | None = None,
    now: int | None = None,
    outer: httpx.BaseTransport | None = None,
    **transport_kwargs: Any,
) -> VeilSession:
    """Fetch and verify the node's descriptor; raise (`NodeRejected`...) before any request.

    `policy` defaults to `Policy.for_mode(mode)`; `model_id`, when given, must be served (and
    approved, where the policy has a release list). `outer` reaches the relay (tests);
    `transport_kwargs` go to `OhttpTransport`.
    """
    policy = policy or Policy.for_mode(mode)
    data = fetch_descriptor(relay_url, node_id, transport=outer)
    return open_session(
        relay_url,
        node_id,
        data,
        policy=policy,
        model_id=model_id,
        store=store,
        on_receipt=on_receipt,
        now=now,
        outer=outer,
        **transport_kwargs,
    )


def open_session(
    relay_url: str,
    node_id: str,
    data: bytes,
    *,
    policy: Policy,
    model_id: str | None = None,
    store: ReceiptStore | None = None,
    on_receipt: Callable[[VerifiedReceipt], None] | None = None,
    now: int | None = None,
    outer: httpx.BaseTransport | None = None,
    fetch_timeout: httpx.Timeout = FETCH_TIMEOUT,
    **transport_kwargs: Any,
) -> VeilSession:
    """`connect` from descriptor bytes already fetched (one fetch, verified under several
    policies); raises `NodeRejected` as `connect` does."""
    clock: Callable[[], float] = time.time if now is None else (lambda: now)
    report = verify_node(data, policy, int(clock()), model_id=model_id)
    assert report.address is not None
    checker = ReceiptChecker(
        report.address, report.approved_models, store=store, on_receipt=on_receipt
    )
    if outer is not None:
        transport_kwargs["outer"] = outer
    session = VeilSession(
        relay_url, node_id, report, checker, policy, model_id, transport_kwargs, clock
    )
    session.fetch_timeout = fetch_timeout
    return session


def verified_openai(relay_url: str, node_id: str, **kwargs: Any):
    """`connect(...)`, then its `openai.OpenAI` client: verified node, checked receipts."""
    return connect(relay_url, node_id, **kwargs).openai()
