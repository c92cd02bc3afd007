"""Only the user's own programs may use the gateway: not a web page, not a rebound name.

The gateway pays from the user's wallet, so any request it serves spends money. Browsers let
any web page send a "simple" cross-origin POST (`content-type: text/plain`) without asking
first, and a page can point its own domain at 127.0.0.1 (DNS rebinding) to make the browser
treat the gateway as same-origin. So every request must:

* name the gateway itself in `Host` (a loopback name, or the address it was bound to): a
  rebound domain arrives with the attacker's name;
* come from no other origin: an `Origin` header, when a browser sends one, must be this same
  host and port; `Sec-Fetch-Site: cross-site` is refused too;
* carry `content-type: application/json` on every POST, which a page cannot send cross-origin
  without a preflight the gateway never grants (it has no CORS);
* carry `Authorization: Bearer <key>` when the gateway has an API key (required whenever it is
  bound to an address other than loopback). The web app's pages and assets, which hold no
  data, are the exception (`veil.client.web.is_public_asset`): the page asks for the key.

Refusals are OpenAI-style errors; nothing is read from the body before the checks pass.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from veil.client.web.routes import is_public_asset
from veil.wire.http import MEDIA_JSON, error_body

__all__ = ["LOOPBACK_NAMES", "RequestGuard", "host_names_for"]

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_App = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


def host_names_for(bind_host: str) -> frozenset[str]:
    """The Host names a gateway bound to `bind_host` answers to: loopback's, plus the bound
    address itself when it is not a wildcard."""
    extra = {bind_host.strip("[]").lower()} - {"", "0.0.0.0", "::"}
    return LOOPBACK_NAMES | extra


def _split_host(value: str) -> str:
    """The host name of a Host header value (`[::1]:8787` -> `::1`), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else ""
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class RequestGuard:
    """ASGI middleware that refuses requests not from the user's own programs (see above)."""

    def __init__(self, app: _App, *, host_names: Iterable[str], api_key: str | None) -> None:
        self.app = app
        self.host_names = frozenset(n.lower() for n in host_names)
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message, code = refusal
        body = json.dumps(error_body(message, "invalid_request_error", None, code)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", MEDIA_JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def refusal(self, scope: _Scope) -> tuple[int, str, str] | None:
        """(status, message, code) when the request must be refused, else None."""
        headers: dict[str, str] = {}
        for name, value in scope.get("headers") or ():
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        host = headers.get("host", "")
        if _split_host(host) not in self.host_names:
            return 421, "this gateway answers only to its own address (Host)", "host_not_allowed"
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
                return 403, "cross-origin requests are refused", "cross_origin"
        if headers.get("sec-fetch-site", "").lower() == "cross-site":
            return 403, "cross-origin requests are refused", "cross_origin"
        public = is_public_asset(str(scope.get("method")), str(scope.get("path")))
        if self.api_key is not None and not public:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self.api_key
            ):
                return (
                    401,
                    "a valid API key is required (Authorization: Bearer ...)",
                    "invalid_api_key",
                )
        if scope.get("method") == "POST":
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != MEDIA_JSON:
                return 415, f"the request body must be {MEDIA_JSON}", "unsupported_media_type"
        return None
