"""The web app's routes on the gateway: the pages, their assets, the history and the explorer.

They sit behind the same `RequestGuard` as the OpenAI routes (own Host and Origin only, JSON
bodies only, the API key when one is set); only the pages and assets, which hold no data,
are served without the key, so a page opened on a gateway with a key can ask for it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from veil.client.web.explorer import explorer_snapshot
from veil.client.web.history import ChatHistory, HistoryInvalid
from veil.client.web.pages import PAGE_ROUTES, STATIC_PREFIX, page_response, static_response
from veil.wire.boundedjson import MAX_JSON_DEPTH, check_depth
from veil.wire.errors import MessageTooLarge
from veil.wire.http import OpenAIError, read_capped

__all__ = ["HISTORY_PATH", "add_web_routes", "is_public_asset"]

HISTORY_PATH = "/veil/history"
EXPLORER_API_PATH = "/veil/explorer"
MAX_HISTORY_BODY = 8 << 20  # one saved conversation, bytes


def is_public_asset(method: str, path: str) -> bool:
    """Whether a request is for a page or asset (served without the API key)."""
    return method in ("GET", "HEAD") and (path in PAGE_ROUTES or path.startswith(STATIC_PREFIX))


def _not_found() -> OpenAIError:
    return OpenAIError(404, "no such route", code="not_found")


def add_web_routes(
    app: FastAPI,
    *,
    status: Callable[[], Awaitable[dict[str, Any]]],
    chain: Callable[[], Any],
    history: Callable[[], ChatHistory | None],
) -> None:
    """Add the pages and their API to `app`; `status` is `/veil/status`'s coroutine,
    `chain` and `history` give the gateway's chain reader and history store."""

    for path in PAGE_ROUTES:

        async def page(request: Request) -> Response:
            return page_response(request.url.path) or JSONResponse({}, 404)

        app.add_api_route(path, page, methods=["GET"], include_in_schema=False)

    @app.get(STATIC_PREFIX + "{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        found = static_response(name)
        if found is None:
            raise _not_found()
        return found

    def store() -> ChatHistory:
        found = history()
        if found is None:
            raise OpenAIError(
                404,
                "this gateway keeps no chat history (start it with --history)",
                code="history_off",
            )
        return found

    @app.get(HISTORY_PATH)
    async def history_list() -> dict[str, Any]:
        kept = store()
        conversations = await asyncio.to_thread(kept.list)
        return {"location": str(kept.path.resolve()), "conversations": conversations}

    @app.post(HISTORY_PATH)
    async def history_save(request: Request) -> dict[str, Any]:
        kept = store()
        try:
            raw = await read_capped(request, MAX_HISTORY_BODY)
        except MessageTooLarge:
            raise OpenAIError(
                413,
                f"a saved conversation is at most {MAX_HISTORY_BODY} bytes",
                code="request_too_large",
            ) from None
        if not check_depth(raw, limit=MAX_JSON_DEPTH):
            raise OpenAIError(400, "the body nests too deep", code="invalid_request")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise OpenAIError(400, "the body is not valid JSON", code="invalid_json") from None
        try:
            return await asyncio.to_thread(kept.save, body)
        except HistoryInvalid as err:
            raise OpenAIError(400, str(err), code="invalid_conversation") from None

    @app.delete(HISTORY_PATH)
    async def history_delete_all() -> dict[str, Any]:
        return {"deleted": await asyncio.to_thread(store().delete_all)}

    @app.delete(HISTORY_PATH + "/{conv_id}")
    async def history_delete(conv_id: str) -> dict[str, Any]:
        kept = store()
        try:
            gone = await asyncio.to_thread(kept.delete, conv_id)
        except HistoryInvalid as err:
            raise OpenAIError(400, str(err), code="invalid_conversation") from None
        if not gone:
            raise OpenAIError(404, "no such conversation", code="not_found")
        return {"deleted": 1}

    @app.get(HISTORY_PATH + "/export")
    async def history_export() -> Response:
        conversations = await asyncio.to_thread(store().list)
        return JSONResponse(
            {"veil_chat_history": 1, "conversations": conversations},
            headers={
                "content-disposition": 'attachment; filename="veil-chat-history.json"',
                "cache-control": "no-store",
            },
        )

    @app.get(EXPLORER_API_PATH)
    async def explorer() -> dict[str, Any]:
        current = await status()
        wallet = (current.get("wallet") or {}).get("address")
        snapshot = await asyncio.to_thread(explorer_snapshot, chain(), current["nodes"], wallet)
        return {**snapshot, "chain": current["chain"], "relay": current["relay"]}
