"""The `anonymous` and `tee` answers: one verified node, paid with a ticket, through the relay.

The request goes sealed (OHTTP) to the node `Router.pick` chooses among the candidates
discovery verified; it waits for no other node's check once one candidate is at hand. A node
that fails before the first byte is marked down and the next one is tried, so a user sees an
answer or one error naming every failure, never a half-tried network.

Only the node's own failures mark it down: a sealed error, a gateway problem, an answer that
ends before its final chunk while the relay's connection ended cleanly (the relay ends its
answer when the node's breaks), a bad receipt, or a relay problem that reports the node
(`urn:veil:relay:*upstream*`). The relay's own refusals and a relay connection that breaks
(`RelayBroke`, httpx errors) say nothing against the node: the next node is tried, or, mid-
stream, the stream ends with `relay_failed_mid_stream`, and the node stays up.

A 402 saying the node's ticket params moved on is retried (up to three times), with the fresh
params it sent.

With a `CreditPurse` (`veil.client.gateway.credits`), a node that commits token keys is paid
with tokens (`x-veil-tokens`) instead of a ticket; tokens the node refuses as worthless
(spent, expired...) are dropped and the request is sent again with others (same retry budget).
The answer is relayed as it arrives; its receipt is checked by the session's transport, and a
refused receipt or a failure mid-stream becomes an error event instead of `[DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import httpx
from starlette.responses import Response, StreamingResponse

from veil.attest.policy import PrivacyMode
from veil.client.credits import WalletToken
from veil.client.discovery import (
    Candidate,
    Discovery,
    serves,
    verification_summary,
)
from veil.client.errors import (
    ClientError,
    DescriptorUnavailable,
    GatewayRefused,
    KeyConfigError,
    NodeRejected,
    PriceAboveLimit,
    ReceiptRefused,
    RelayBroke,
    RelayRefused,
    ResponseRefused,
)
from veil.client.gateway.common import read_view, select, sse_error
from veil.client.gateway.credits import TOKEN_REFUSALS, CreditPurse
from veil.client.gateway.routing import Router
from veil.client.payer import Payer, Payment
from veil.client.session import VeilSession
from veil.errors import VeilError
from veil.identity.credits.token import encode_token_header, tokens_payment_id
from veil.wire import boundedjson
from veil.wire.errors import Malformed, MessageTooLarge
from veil.wire.http import (
    ATTESTATION_HEADER,
    CHAT_PATH,
    INVALID_BASE_URL,
    MEDIA_JSON,
    MEDIA_SSE,
    MODE_HEADER,
    NODE_HEADER,
    PAYMENT_HEADER,
    RECEIPT_HEADER,
    RECEIPT_ID_HEADER,
    REQUEST_DIGEST_EXTENSION,
    TICKET_HEADER,
    TICKET_ID_EXTENSION,
    TICKET_ID_HEADER,
    TICKET_PARAMS_HEADER,
    TOKENS_HEADER,
    VERIFICATION_HEADER,
    OpenAIError,
)
from veil.wire.problem import RELAY_PROBLEM_PREFIX

__all__ = ["DirectPath"]

log = logging.getLogger(__name__)

# The sealed request's URL: its host is never contacted, the node reads only the path.
_NODE_CHAT_URL = httpx.URL(INVALID_BASE_URL).join(CHAT_PATH)
# 402 codes after which the request is sent again once, with fresh params, to the same node.
_RETRY_PAYMENT = frozenset({"ticket_params_stale"})
# How often one request is sent again after such a 402. A refused ticket is never charged, and
# under load a node's offer can move on again (each winner retires it) before the retry lands.
_PAYMENT_RETRIES = 3
# A 402's error body is read for its code only; a larger one is passed through unread.
_MAX_REFUSAL_BYTES = 64 * 1024


class _Failover(Exception):
    """The attempt failed before the first byte: try another node. `node_failed`: the node
    is to blame (it is marked down); else the relay is, and the node stays up."""

    def __init__(self, why: str, *, node_failed: bool = True) -> None:
        super().__init__(why)
        self.why = why
        self.node_failed = node_failed


def _reports_the_node(err: RelayRefused) -> bool:
    """Whether a relay refusal reports the node's failure (it could not be reached or did
    not answer: `upstream-*`, `bad-upstream`) rather than the relay's own."""
    kind = err.problem_type
    return kind.startswith(RELAY_PROBLEM_PREFIX) and "upstream" in kind[len(RELAY_PROBLEM_PREFIX) :]


class DirectPath:
    """Answers from one node at a time: selection, failover, payment, the relayed answer.

    Holds one HTTP client per verified session (a session verified again gets a new one)."""

    def __init__(
        self,
        discovery: Discovery,
        router: Router,
        *,
        relay_url: str,
        payer: Payer | None,
        outer: httpx.AsyncBaseTransport | None,
        purse: CreditPurse | None = None,
    ) -> None:
        self.purse = purse
        self.discovery = discovery
        self.router = router
        self.relay_url = relay_url
        self.payer = payer
        self.outer = outer
        self._clients: dict[tuple[str, PrivacyMode], tuple[VeilSession, httpx.AsyncClient]] = {}

    async def aclose(self) -> None:
        for _session, client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def client_for(self, candidate: Candidate) -> httpx.AsyncClient:
        key = (candidate.operator, candidate.mode)
        held = self._clients.get(key)
        if held is not None and held[0] is candidate.session:
            return held[1]
        client = httpx.AsyncClient(
            transport=candidate.session.async_transport(outer=self.outer), timeout=None
        )
        self._clients[key] = (candidate.session, client)
        if held is not None:
            asyncio.get_running_loop().create_task(held[1].aclose())
        return client

    async def chat(
        self, payload: bytes, model_id: str, mode: PrivacyMode, stream: bool
    ) -> Response:
        """The answer of the first eligible node that does not fail before its first byte;
        `payload` is the checked request, naming the bare `model_id`."""
        view = self.discovery.fresh_view() or await read_view(self.discovery)
        if not any(serves(n, model_id) for n in view.nodes):
            raise OpenAIError(
                404,
                f"the model {model_id!r} is not served by any active node in the registry",
                code="model_not_found",
                param="model",
            )
        selection = await select(self.discovery, mode, model_id)
        if not selection.candidates:
            if selection.refused_by_policy():
                raise OpenAIError(
                    403,
                    f"no node serving {model_id!r} satisfies the {mode} policy; nothing was "
                    f"sent. Refusals: {selection.reasons()}",
                    code="no_node_satisfies_policy",
                    type_="policy_error",
                )
            raise OpenAIError(
                503,
                f"no node serving {model_id!r} is available under the {mode} policy now. "
                f"Refusals: {selection.reasons()}",
                code="no_node_available",
                type_="server_error",
            )
        tried: list[str] = []
        failures: list[str] = []
        while True:
            candidate = self.router.pick(selection.candidates, exclude=tried)
            if candidate is None and selection.unsettled:  # wait for the others' checks now
                selection = await select(self.discovery, mode, model_id, enough=None)
                selection.unsettled.clear()
                candidate = self.router.pick(selection.candidates, exclude=tried)
            if candidate is None:
                raise OpenAIError(
                    503,
                    f"every eligible node failed for {model_id!r}: {'; '.join(failures)}",
                    code="no_node_available",
                    type_="server_error",
                )
            tried.append(candidate.operator)
            try:
                return await self._attempt(candidate, payload, stream, view.min_stake)
            except _Failover as failed:
                if failed.node_failed:
                    self.router.mark_down(candidate.operator, failed.why)
                failures.append(f"{candidate.operator}: {failed.why}")

    async def _payment(self, operator: str) -> Payment | None:
        if self.payer is None:
            return None
        try:
            params = await self.payer.params_for(operator)
        except PriceAboveLimit as err:  # try a node that asks less
            raise _Failover(str(err)) from None
        return None if params is None else self.payer.pay(params)

    def _headers(
        self, candidate: Candidate, min_stake: int, response: httpx.Response | None
    ) -> dict[str, str]:
        session = candidate.session
        headers = {
            NODE_HEADER: candidate.operator,
            MODE_HEADER: str(candidate.mode),
            ATTESTATION_HEADER: f"{session.attestation_kind}; {session.report.isolation}",
            VERIFICATION_HEADER: verification_summary(candidate, min_stake),
            "cache-control": "no-store",
        }
        if response is not None:
            digest = response.extensions.get(REQUEST_DIGEST_EXTENSION)
            if isinstance(digest, bytes):
                headers[RECEIPT_ID_HEADER] = "0x" + digest.hex()
        return headers

    async def _send(
        self,
        candidate: Candidate,
        payload: bytes,
        stream: bool,
        payment: Payment | None,
        tokens: list[WalletToken] | None = None,
    ) -> httpx.Response:
        """The node's answer, its head checked (a whole answer's receipt too); `_Failover`
        for what another node may not suffer, an error answer for what it would."""
        headers = {"content-type": MEDIA_JSON, "accept": MEDIA_SSE if stream else MEDIA_JSON}
        extensions: dict[str, object] = {}
        if payment is not None:
            headers[TICKET_HEADER] = payment.header_value()
            extensions[TICKET_ID_EXTENSION] = payment.ticket_id
        if tokens is not None:
            spent = [t.token for t in tokens]
            headers[TOKENS_HEADER] = encode_token_header(spent)
            # the receipt must name exactly these tokens, as it would name a ticket
            extensions[TICKET_ID_EXTENSION] = tokens_payment_id(spent)
        request = httpx.Request(
            "POST", _NODE_CHAT_URL, content=payload, headers=headers, extensions=extensions
        )
        client = self.client_for(candidate)
        op = candidate.operator
        try:
            return await client.send(request, stream=True)
        except ReceiptRefused as err:  # a whole answer whose receipt failed: never returned
            self.router.mark_down(op, f"receipt refused ({err.check})")
            raise OpenAIError(
                502,
                f"the answer of node {op} failed receipt verification ({err.check}) and was "
                "not returned",
                code="receipt_refused",
                type_="server_error",
            ) from None
        except RelayRefused as err:
            if err.status == 429:
                raise OpenAIError(
                    429, "the relay is rate-limiting this client", code="rate_limited"
                ) from None
            if err.status == 413:
                raise OpenAIError(
                    413, "the sealed request is over the relay's limit", code="request_too_large"
                ) from None
            why = f"relay answered {err.status} ({err.problem_type or 'no type'})"
            raise _Failover(why, node_failed=_reports_the_node(err)) from None
        except RelayBroke as err:
            raise _Failover(f"{err}", node_failed=False) from None
        except (KeyConfigError, NodeRejected, DescriptorUnavailable) as err:
            self.discovery.drop_session(op, candidate.mode)
            raise _Failover(f"node no longer verifies: {type(err).__name__}") from None
        except (GatewayRefused, ResponseRefused) as err:
            raise _Failover(f"{type(err).__name__}: {err}") from None
        except httpx.HTTPError as err:
            raise OpenAIError(
                502,
                f"the relay at {self.relay_url} cannot be reached ({type(err).__name__})",
                code="relay_unreachable",
                type_="server_error",
            ) from None
        except VeilError as err:  # e.g. the chain could not be read while verifying again
            raise _Failover(f"{type(err).__name__}: {err}") from None

    async def _attempt(
        self, candidate: Candidate, payload: bytes, stream: bool, min_stake: int
    ) -> Response:
        """One node's answer; `_Failover` when it fails before the first byte. The node
        counts as in flight until its answer is handed over, or until the stream ends."""
        op = candidate.operator
        tokens = None
        if self.purse is not None:
            tokens = await self.purse.take(candidate, self.client_for(candidate))
        payment = None if tokens is not None else await self._payment(op)
        self.router.started(op)
        handed_over = False
        try:
            for attempt in range(1 + _PAYMENT_RETRIES):
                started = time.monotonic()
                try:
                    response = await self._send(candidate, payload, stream, payment, tokens)
                except BaseException:
                    if tokens is not None and self.purse is not None:  # offered again later:
                        self.purse.wallet.settle(tokens, spent=False)  # the node drops a spent one
                    raise
                paid_with = tokens  # what this answer (if it is the one) was paid with
                if tokens is not None and self.purse is not None:
                    retry_tokens = await self._settle_tokens(candidate, response, tokens)
                    tokens = None
                    if retry_tokens is not None and attempt < _PAYMENT_RETRIES:
                        tokens = retry_tokens
                        continue
                if self.payer is not None:
                    with contextlib.suppress(PriceAboveLimit):  # forgotten: the next request
                        # to this node fetches its offer again and fails over on it
                        self.payer.update_from_header(
                            op, response.headers.get(TICKET_PARAMS_HEADER)
                        )
                if response.status_code == 402 and attempt < _PAYMENT_RETRIES:
                    retry = await self._payment_retry(op, response, payment)
                    if retry is not None:
                        payment = retry
                        continue
                break
            headers = self._headers(candidate, min_stake, response)
            if paid_with is not None:
                payment_id = tokens_payment_id([t.token for t in paid_with])
                headers[PAYMENT_HEADER] = f"tokens {len(paid_with)} 0x{payment_id.hex()}"
            elif payment is not None:
                headers[TICKET_ID_HEADER] = "0x" + payment.ticket_id.hex()
                headers[PAYMENT_HEADER] = f"ticket 0x{payment.ticket_id.hex()}"
            status = response.status_code
            if status >= 500:
                await response.aclose()
                raise _Failover(f"node answered {status}")
            if status != 200:
                content = await response.aread()
                await response.aclose()
                log.info("node %s answered %d", op, status)
                return Response(
                    content,
                    status_code=status,
                    media_type=response.headers.get("content-type", MEDIA_JSON),
                    headers=headers,
                )
            if response.headers.get("content-type", "").split(";")[0].strip() != MEDIA_SSE:
                content = await response.aread()  # verified whole by the receipt check
                await response.aclose()
                self.router.record_ttfb(op, time.monotonic() - started)
                self.router.mark_up(op)
                headers[RECEIPT_HEADER] = "verified"
                log.info("node %s answered 200 (whole, receipt verified)", op)
                return Response(
                    content,
                    status_code=200,
                    media_type=response.headers.get("content-type", MEDIA_JSON),
                    headers=headers,
                )
            pieces = response.aiter_raw()
            try:
                first = await pieces.__anext__()
            except StopAsyncIteration:
                first = b""
            except ReceiptRefused as err:
                await response.aclose()
                self.router.mark_down(op, f"receipt refused ({err.check})")
                raise OpenAIError(
                    502,
                    f"the answer of node {op} failed receipt verification ({err.check})",
                    code="receipt_refused",
                    type_="server_error",
                ) from None
            except (ClientError, httpx.HTTPError) as err:
                await response.aclose()
                why = f"the answer broke before its first byte: {type(err).__name__}"
                relay = isinstance(err, RelayBroke | httpx.HTTPError)
                raise _Failover(why, node_failed=not relay) from None
            self.router.record_ttfb(op, time.monotonic() - started)
            handed_over = True
            return StreamingResponse(
                self._relay_stream(op, response, first, pieces),
                status_code=200,
                media_type=MEDIA_SSE,
                headers={**headers, "x-accel-buffering": "no"},
            )
        finally:
            if not handed_over:
                self.router.finished(op)

    async def _settle_tokens(
        self, candidate: Candidate, response: httpx.Response, tokens: list[WalletToken]
    ) -> list[WalletToken] | None:
        """Settle the tokens a request carried; fresh ones when the node refused them as
        worthless (the request is then sent again with those)."""
        assert self.purse is not None
        if response.status_code != 402:
            self.purse.wallet.settle(tokens, spent=True)  # the node took them
            return None
        content = await response.aread()
        try:
            code = boundedjson.loads(content, max_bytes=_MAX_REFUSAL_BYTES)["error"]["code"]
        except (Malformed, MessageTooLarge, KeyError, TypeError):
            code = None
        worthless = code in TOKEN_REFUSALS
        self.purse.wallet.settle(tokens, spent=worthless)
        if not worthless:
            return None
        log.info("node %s refused tokens (%s); sending again with others", candidate.operator, code)
        fresh = await self.purse.take(candidate, self.client_for(candidate))
        if fresh is not None:
            await response.aclose()
        return fresh

    async def _payment_retry(
        self, op: str, response: httpx.Response, sent: Payment | None
    ) -> Payment | None:
        """A fresh payment when a 402 says the params were stale (or asks for payment the
        gateway could not make for lack of params) and the answer carried new ones."""
        if self.payer is None:
            return None
        content = await response.aread()
        try:
            code = boundedjson.loads(content, max_bytes=_MAX_REFUSAL_BYTES)["error"]["code"]
        except (Malformed, MessageTooLarge, KeyError, TypeError):
            code = None
        fresh = response.headers.get(TICKET_PARAMS_HEADER)
        retry = code in _RETRY_PAYMENT or (code == "payment_required" and sent is None)
        if not retry or not fresh:
            return None
        try:
            taken = self.payer.update_from_header(op, fresh)
        except PriceAboveLimit as err:
            await response.aclose()
            raise _Failover(str(err)) from None
        if not taken:
            return None
        params = self.payer.known(op)
        if params is None:
            return None
        await response.aclose()
        log.info("node %s asked for payment (%s); retrying with its new params", op, code)
        return self.payer.pay(params)

    async def _relay_stream(
        self, op: str, response: httpx.Response, first: bytes, pieces: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        """The checked answer as it arrives; a failure becomes an error event, never a cut."""
        try:
            if first:
                yield first
            async for piece in pieces:
                yield piece
            self.router.mark_up(op)
            log.info("node %s answered 200 (streamed, receipt verified)", op)
        except ReceiptRefused as err:
            self.router.mark_down(op, f"receipt refused ({err.check})")
            yield sse_error(
                f"the answer of node {op} failed receipt verification ({err.check}); "
                "do not trust the text above",
                "receipt_refused",
            )
        except (RelayBroke, httpx.HTTPError) as err:  # the relay's failure, not the node's
            log.warning("the relay broke mid-stream for node %s (%s)", op, type(err).__name__)
            yield sse_error(
                f"the relay connection broke mid-stream ({type(err).__name__}); the answer is "
                "incomplete",
                "relay_failed_mid_stream",
            )
        except VeilError as err:
            self.router.mark_down(op, f"failed mid-stream ({type(err).__name__})")
            yield sse_error(
                f"node {op} failed mid-stream ({type(err).__name__}); the answer is incomplete",
                "node_failed_mid_stream",
            )
        finally:
            with contextlib.suppress(Exception):
                await response.aclose()
            self.router.finished(op)
