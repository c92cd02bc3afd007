"""The gateway's web app: a private chat page at `/` and a network explorer at `/explorer`.

Both are static pages (HTML, CSS, ES modules in `static/`, no build step) served by the
gateway from its own origin, so they talk to nothing but the gateway: the chat page uses the
OpenAI route (`/v1/chat/completions`, streamed) and reads each answer's verification from the
gateway's `x-veil-*` headers and the receipt on its final chunk; the explorer reads
`/veil/explorer`. Conversations are kept in one SQLite file on this machine (`history`).

Layout: `pages` (the files and their security headers), `routes` (the routes on the gateway),
`history` (the conversation store), `explorer` (the explorer's chain reads, bounded).
"""

from veil.client.web.history import ChatHistory, HistoryInvalid, HistoryLimits
from veil.client.web.routes import HISTORY_PATH, add_web_routes, is_public_asset

__all__ = [
    "HISTORY_PATH",
    "ChatHistory",
    "HistoryInvalid",
    "HistoryLimits",
    "add_web_routes",
    "is_public_asset",
]
