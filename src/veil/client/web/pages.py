"""The web app's files, served by the gateway from its own origin with a strict policy.

The pages are plain HTML, CSS and ES modules shipped in the package (no build step, nothing
from a CDN). Only the files listed here are served, read once, and every one carries a
Content-Security-Policy that allows no inline script, no other origin and no framing.
"""

from __future__ import annotations

from importlib import resources

from starlette.responses import Response

__all__ = ["CSP", "PAGE_ROUTES", "STATIC_PREFIX", "page_response", "static_response"]

STATIC_PREFIX = "/static/"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_MEDIA = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# path -> file: the pages
PAGE_ROUTES = {"/": "index.html", "/explorer": "explorer.html"}
_ASSETS = (
    "index.html",
    "explorer.html",
    "app.css",
    "api.js",
    "chat.js",
    "markdown.js",
    "explorer.js",
    "history.js",
    "icon.svg",
)


def _load() -> dict[str, bytes]:
    folder = resources.files("veil.client.web").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in _ASSETS}


_FILES = _load()


def _headers() -> dict[str, str]:
    return {
        "content-security-policy": CSP,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "x-frame-options": "DENY",
        "cross-origin-opener-policy": "same-origin",
        "cross-origin-resource-policy": "same-origin",
        "cache-control": "no-store",
    }


def _response(name: str) -> Response | None:
    data = _FILES.get(name)
    if data is None:
        return None
    media = _MEDIA[name[name.rfind(".") :]]
    return Response(data, media_type=media, headers=_headers())


def page_response(path: str) -> Response | None:
    """The page served at `path` (`/`, `/explorer`), else None."""
    name = PAGE_ROUTES.get(path)
    return None if name is None else _response(name)


def static_response(name: str) -> Response | None:
    """An asset by file name (`chat.js`), else None; pages are served at their routes only."""
    return None if name.endswith(".html") else _response(name)
