"""The `mpc` answers: this gateway is the MPC client; three verified party nodes compute the
layers on secret shares, and no node ever sees the prompt or the answer.

The parties are chosen and claimed at once (two requests never share a party), the request
is checked and the model's public parts are loaded before anything is sent, and no other mode
is ever used instead. Every blocking MPC call runs on a thread of the answer's own (`_MpcRun`),
off the event loop. `veil.mpc` (SPU, jax, torch behind it) is imported only when an `:mpc`
request comes: importing the gateway stays light.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from veil.attest.policy import PrivacyMode
from veil.client.discovery import Discovery, Selection
from veil.client.errors import NoPartyQuorum, PartiesBusy
from veil.client.gateway.common import GatewayConfig, read_view, select, sse_error
from veil.client.gateway.routing import Router
from veil.client.mpc import MPC_WORLD_SIZE, PartyChoice, choose_parties, parties_of
from veil.errors import VeilError
from veil.wire.chat import SSE_DONE, ChatCompletionRequest, Completion, Sampling, usage
from veil.wire.http import (
    ATTESTATION_HEADER,
    MEDIA_SSE,
    MODE_HEADER,
    MPC_PROTOCOL_HEADER,
    NODES_HEADER,
    RECEIPT_HEADER,
    VERIFICATION_HEADER,
    OpenAIError,
)

if TYPE_CHECKING:
    from veil.mpc.api import MpcChat, MpcDelta
    from veil.mpc.source import ModelSource

__all__ = ["MpcPath", "SourceLoader", "default_source"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

SourceLoader = Callable[[str], "ModelSource"]  # model id -> the model's public parts


def default_source(model_id: str) -> ModelSource:
    """The public parts of the model the parties serve layers of (veil.mpc.source)."""
    from veil.mpc.source import source_for_model

    return source_for_model(model_id)


class MpcPath:
    """Answers computed by three party nodes; the public parts of each model load once, on
    its first `:mpc` request, in a thread."""

    def __init__(
        self,
        discovery: Discovery,
        router: Router,
        config: GatewayConfig,
        loader: SourceLoader | None = None,
    ) -> None:
        self.discovery = discovery
        self.router = router
        self.config = config
        self._loader = loader or default_source
        self._sources: dict[str, ModelSource] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self._busy: set[str] = set()  # operators (lower case) in a session of this gateway
        self._lock = threading.Lock()  # `_busy`: freed from the runs' threads

    async def chat(
        self,
        request: Request,
        req: ChatCompletionRequest,
        sampling: Sampling,
        model_id: str,
        stream: bool,
    ) -> Response:
        """An `:mpc` answer for the checked `req`. Nothing goes to any node before the
        parties are chosen and the request is checked."""
        max_tokens = self._max_tokens(sampling, req.limit_param)
        if self.discovery.fresh_view() is None:
            await read_view(self.discovery)
        # No wait for other nodes' checks once enough candidates are at hand; all of them
        # only when those are not a quorum for this model.
        parties = MPC_WORLD_SIZE.get(self.config.mpc_protocol, 3)
        selection = await select(self.discovery, PrivacyMode.MPC, None, enough=parties)
        try:
            try:
                choice = self._claim(selection, model_id)
            except NoPartyQuorum:
                if not selection.unsettled:
                    raise
                selection = await select(self.discovery, PrivacyMode.MPC, None, enough=None)
                choice = self._claim(selection, model_id)
        except NoPartyQuorum as err:
            raise OpenAIError(
                503,
                f"{err}; nothing was sent. Refusals: {selection.reasons()}",
                code="mpc_unavailable",
                type_="server_error",
            ) from None
        for op in choice.operators:
            self.router.started(op)
        run = _MpcRun()
        chat: MpcChat | None = None
        handed_over = False
        try:
            source = await self._source(model_id, choice)
            chat = await run.call(self._start, source, choice, req, sampling, max_tokens)
            headers = self._headers(choice)
            completion = Completion(model_id)
            log.info("mpc session on %s started", ",".join(choice.operators))
            if not stream:
                return await self._whole(request, run, chat, completion, headers)
            try:
                first = await run.next(chat)  # opens the session, runs the prefill
            except VeilError as err:
                raise self._error(err) from None
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            handed_over = True
            return StreamingResponse(
                self._stream(run, chat, completion, first, include_usage, choice),
                status_code=200,
                media_type=MEDIA_SSE,
                headers={**headers, "x-accel-buffering": "no"},
            )
        finally:
            if not handed_over:
                run.end(chat, lambda: self._release(choice))

    def _claim(self, selection: Selection, model_id: str) -> PartyChoice:
        """Choose three parties and claim them at once (two requests never share a party);
        `NoPartyQuorum` when the selection holds none (the 503 is raised by `chat`)."""
        ranked = self.router.rank(selection.candidates)
        with self._lock:
            try:
                choice = choose_parties(
                    ranked, model_id, protocol=self.config.mpc_protocol, busy=self._busy
                )
            except PartiesBusy as err:
                raise self._busy_error(str(err)) from None
            self._busy.update(op.lower() for op in choice.operators)
        return choice

    def _max_tokens(self, sampling: Sampling, param: str) -> int:
        """The completion limit: each token is seconds of secret-shared computation, so it
        has a default and a bound of its own."""
        requested = sampling.max_tokens
        if requested is None:
            return self.config.mpc_default_max_tokens
        if not 1 <= requested <= self.config.mpc_max_tokens:
            raise OpenAIError(
                400,
                f"{param} is {requested}; an mpc answer takes 1 to {self.config.mpc_max_tokens} "
                "tokens (each is seconds of secret-shared computation)",
                code="invalid_request",
                param=param,
            )
        return requested

    def _busy_error(self, why: str) -> OpenAIError:
        return OpenAIError(
            503,
            f"{why}; nothing was sent, try again later",
            code="mpc_parties_busy",
            type_="server_error",
            headers={"retry-after": str(self.config.mpc_retry_after_s)},
        )

    def _error(self, err: VeilError) -> OpenAIError:
        """The answer for an MPC failure before the first token (nothing was shown yet)."""
        from veil.mpc.errors import (
            InvalidRequest,
            MpcConfigError,
            PartyBusy,
            PartyUnavailable,
        )

        if isinstance(err, InvalidRequest):
            return OpenAIError(400, str(err), code="invalid_request", param=err.param)
        if isinstance(err, PartyBusy):
            return self._busy_error(f"an MPC party is busy with another session ({err})")
        if isinstance(err, MpcConfigError | PartyUnavailable):
            return OpenAIError(
                503,
                f"the chosen MPC parties cannot run this session: {err}",
                code="mpc_unavailable",
                type_="server_error",
            )
        log.warning("mpc session failed before its first token: %s", type(err).__name__)
        return OpenAIError(
            502,
            f"an MPC party failed before the first token ({type(err).__name__}: {err}); "
            "nothing was answered",
            code="mpc_party_failed",
            type_="server_error",
        )

    async def _source(self, model_id: str, choice: PartyChoice) -> ModelSource:
        """The model's public parts for the client side (loaded once, in a thread); they
        must be the layer weights the chosen parties state."""
        lock = self._loading.setdefault(model_id, asyncio.Lock())
        async with lock:
            source = self._sources.get(model_id)
            if source is None:
                try:
                    source = await asyncio.to_thread(self._loader, model_id)
                except VeilError as err:
                    raise OpenAIError(
                        503,
                        f"this gateway cannot run {model_id!r} in the mpc mode: {err}",
                        code="mpc_unavailable",
                        type_="server_error",
                    ) from None
                self._sources[model_id] = source
        if source.tokenizer is None:
            raise OpenAIError(
                503,
                f"this gateway has no tokenizer for {model_id!r} ({source.name}); nothing was sent",
                code="mpc_unavailable",
                type_="server_error",
            )
        if source.weights_sha256 != choice.weights_sha256:
            raise OpenAIError(
                503,
                f"the MPC parties for {model_id!r} serve other layer weights "
                f"({choice.weights_sha256[:16]}...) than this gateway's model "
                f"({source.weights_sha256[:16]}...); nothing was sent",
                code="mpc_unavailable",
                type_="server_error",
            )
        return source

    def _start(
        self,
        source: ModelSource,
        choice: PartyChoice,
        req: ChatCompletionRequest,
        sampling: Sampling,
        max_tokens: int,
    ) -> MpcChat:
        """The answer, checked and encoded (on the run's thread; nothing is sent yet)."""
        from veil.mpc.api import MpcChatBackend
        from veil.mpc.runtime import MpcConfig

        try:
            backend = MpcChatBackend(
                source,
                parties_of(
                    [c.session for c in choice.candidates], timeout_s=self.config.mpc_timeout_s
                ),
                MpcConfig(protocol=choice.protocol),
                timeout_s=self.config.mpc_timeout_s,
            )
            return backend.start(
                [(m.role, m.text()) for m in req.messages],
                max_tokens=max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                stop=sampling.stop,
                seed=sampling.seed,
            )
        except VeilError as err:
            raise self._error(err) from None

    def _headers(self, choice: PartyChoice) -> dict[str, str]:
        kinds = sorted(
            {
                f"{c.session.attestation_kind}; {c.session.report.isolation}"
                for c in choice.candidates
            }
        )
        verification = (
            f"{len(choice.candidates)} party nodes of distinct operators, each: registry active "
            "with enough stake, descriptor verified under the mpc policy, operator and weights "
            f"hash match the registry; their descriptors agree on protocol {choice.protocol} "
            f"and layer weights {choice.weights_sha256[:16]}...; no receipt (no node sees the "
            "answer)"
        )
        return {
            MODE_HEADER: str(PrivacyMode.MPC),
            NODES_HEADER: ",".join(choice.operators),
            MPC_PROTOCOL_HEADER: choice.protocol,
            ATTESTATION_HEADER: ", ".join(kinds).encode("ascii", "replace").decode("ascii"),
            VERIFICATION_HEADER: verification,
            RECEIPT_HEADER: "none",
            "cache-control": "no-store",
        }

    def _release(self, choice: PartyChoice) -> None:
        """The session is closed: its parties are free again (any thread)."""
        with self._lock:
            self._busy.difference_update(op.lower() for op in choice.operators)
        for op in choice.operators:
            self.router.finished(op)

    async def _whole(
        self,
        request: Request,
        run: _MpcRun,
        chat: MpcChat,
        completion: Completion,
        headers: dict[str, str],
    ) -> Response:
        """The whole answer; a client that goes away cancels it after the token in progress."""

        async def watch_disconnect() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            chat.cancel()  # stops after the token in progress

        watcher = asyncio.create_task(watch_disconnect())
        try:
            deltas = await run.call(list, chat)
        except VeilError as err:
            raise self._error(err) from None
        finally:
            watcher.cancel()
        if chat.finish_reason == "cancelled":
            return Response(status_code=499)
        log.info("mpc answer whole: %d completion tokens", chat.completion_tokens)
        body = completion.whole(
            "".join(d.text for d in deltas),
            chat.finish_reason or "stop",
            usage(chat.prompt_tokens, chat.completion_tokens),
        )
        return JSONResponse(body, headers=headers)

    async def _stream(
        self,
        run: _MpcRun,
        chat: MpcChat,
        completion: Completion,
        first: MpcDelta | None,
        include_usage: bool,
        choice: PartyChoice,
    ) -> AsyncIterator[bytes]:
        """The answer as tokens arrive; a failure becomes an error event, never a cut."""
        try:
            yield completion.chunk({"role": "assistant", "content": ""})
            delta = first
            while delta is not None:
                yield completion.chunk({"content": delta.text})
                delta = await run.next(chat)
            counts = usage(chat.prompt_tokens, chat.completion_tokens)
            yield completion.chunk({}, chat.finish_reason, usage=counts)
            if include_usage:
                yield completion.usage_chunk(counts)
            yield SSE_DONE
            log.info("mpc answer streamed: %d completion tokens", chat.completion_tokens)
        except Exception as err:  # any failure mid-answer is an error event, never a cut
            log.warning("mpc session failed mid-stream: %s", type(err).__name__)
            yield sse_error(
                f"the MPC parties {', '.join(choice.operators)} failed mid-stream "
                f"({type(err).__name__}); the answer is incomplete",
                "node_failed_mid_stream",
            )
        finally:
            run.end(chat, lambda: self._release(choice))


class _MpcRun:
    """One MPC answer's blocking calls, in order, on a thread of its own (off the event loop).

    `end` cancels the answer and closes its session after the call in progress, then runs
    `then` (freeing the parties), without waiting: a client that went away costs no wait."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, "veil-mpc")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.wrap_future(self._pool.submit(fn, *args, **kwargs))

    async def next(self, chat: MpcChat) -> MpcDelta | None:
        """The next text delta, or None at the end (raises the run's `VeilError`)."""
        return await self.call(next, chat, None)

    def end(self, chat: MpcChat | None, then: Callable[[], None]) -> None:
        def close() -> None:
            try:
                if chat is not None:
                    chat.close()
            except Exception as exc:  # a close that fails has nothing left to tell the client
                log.info("mpc session close: %s", type(exc).__name__)
            finally:
                then()

        if chat is not None:
            chat.cancel()
        self._pool.submit(close)
        self._pool.shutdown(wait=False)
