"""Shared test pieces for the OHTTP stack: a small inner OpenAI-like app that streams SSE.

Importable as `support.ohttp` (pytest puts `tests/` on sys.path), and
runnable as a script by the end-to-end test (`python tests/support/ohttp.py gateway ...`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

SECRET_PROMPT = "violet-harbor-7731 is my secret prompt"
ANSWER_TOKENS = ["The", " quiet", " otter", " sings", " zebra-quartz-4410"]
ANSWER = "".join(ANSWER_TOKENS)


def make_inner_app(seen: list[dict[str, Any]], token_delay: float = 0.0) -> FastAPI:
    """An OpenAI-style app; every request's client address and headers go into `seen`."""
    app = FastAPI()

    def record(request: Request) -> None:
        seen.append(
            {
                "client": request.scope.get("client"),
                "headers": [(k.decode(), v.decode()) for k, v in request.scope["headers"]],
                "path": request.url.path,
            }
        )

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        record(request)
        body = await request.json()
        seen[-1]["prompt"] = body["messages"][-1]["content"]
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "cmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model", "m"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": ANSWER},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
                }
            )

        async def events() -> Any:
            for token in ANSWER_TOKENS:
                chunk = {
                    "id": "cmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": body.get("model", "m"),
                    "choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
                if token_delay:
                    await asyncio.sleep(token_delay)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        record(request)
        return {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "veil"}]}

    @app.get("/healthz")
    async def healthz(request: Request) -> Any:
        record(request)
        return {"ok": True}

    @app.get("/admin")
    async def admin(request: Request) -> Any:  # must stay unreachable through the gateway
        record(request)
        return {"admin": True}

    return app


def _serve_gateway(key_file: str, port: str, seen_file: str) -> None:
    """Run a gateway over the inner app; append what the inner app saw to `seen_file`."""
    import logging

    import uvicorn

    from veil.node.gateway import create_gateway_app
    from veil.node.keys import NodeKeys

    class Recorder(list):  # writes each entry as it is recorded
        def append(self, item: Any) -> None:
            super().append(item)

        def flush(self) -> None:
            Path(seen_file).write_text(json.dumps(list(self)))

    seen: Recorder = Recorder()
    inner = make_inner_app(seen, token_delay=0.05)

    async def flushing_inner(scope: Any, receive: Any, send: Any) -> None:
        await inner(scope, receive, send)
        seen.flush()

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    app = create_gateway_app(flushing_inner, NodeKeys.load(Path(key_file)))
    uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="debug")


if __name__ == "__main__":
    if sys.argv[1] == "gateway":
        _serve_gateway(*sys.argv[2:5])


class FakeRelay:
    """Plays the relay for client tests: routes relay URLs to a gateway app in-process.

    Records every request the client sends (url, headers, body) and can tamper with answers.
    """

    def __init__(self, app: Any, tamper: Any = None) -> None:
        from starlette.testclient import TestClient

        self.client = TestClient(app)
        self.sent: list[tuple[str, dict[str, str], bytes]] = []
        self.tamper = tamper

    def __call__(self, request: Any) -> Any:
        import httpx

        body = request.read()
        self.sent.append((str(request.url), dict(request.headers), body))
        if request.url.path.endswith("/ohttp-keys"):
            answer = self.client.get("/.well-known/ohttp-keys")
        else:
            media = request.headers["content-type"]
            answer = self.client.post("/gateway", content=body, headers={"content-type": media})
        content = answer.content
        is_answer = not request.url.path.endswith("/ohttp-keys")
        if self.tamper is not None and answer.status_code == 200 and is_answer:
            content = self.tamper(content)
        media = answer.headers.get("content-type", "")
        return httpx.Response(answer.status_code, headers={"content-type": media}, content=content)
