"""Problem details (RFC 9457) bodies, shaped so the OpenAI SDK shows them too.

A gateway or relay refusal is `application/problem+json` with the standard members plus an
OpenAI-style `error` object, so a plain `openai` client prints a readable message.
"""

from __future__ import annotations

import json
from typing import Any

from veil.wire.boundedjson import check_depth

__all__ = ["MEDIA_PROBLEM", "RELAY_PROBLEM_PREFIX", "parse_problem", "problem_body"]

MEDIA_PROBLEM = "application/problem+json"
# Problem types of relay refusals; a client tells relay errors from gateway errors by this.
RELAY_PROBLEM_PREFIX = "urn:veil:relay:"


def problem_body(problem_type: str, title: str, status: int, detail: str = "") -> bytes:
    """The JSON bytes of one problem; `detail` must never contain request or response content."""
    body: dict[str, Any] = {"type": problem_type, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body["error"] = {"message": detail or title, "type": problem_type, "code": status}
    return json.dumps(body, separators=(",", ":")).encode()


def parse_problem(data: bytes) -> tuple[str, str]:
    """(type, detail-or-title) of a problem body; ("", "") when it is not one."""
    if not check_depth(data):  # before json.loads, which recurses once per level
        return "", ""
    try:
        body = json.loads(data)
    except ValueError:
        return "", ""
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        return "", ""
    text = body.get("detail") or body.get("title") or ""
    return body["type"], text if isinstance(text, str) else ""
