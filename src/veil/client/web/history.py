"""The chat page's history: conversations kept only on this machine, in one private SQLite file.

The browser never stores a conversation itself; it saves each one here through the gateway's
guarded `/veil/history` routes. Deleting is meant literally: `secure_delete` overwrites the
freed pages with zeros, so the text is gone from the file too, not just unlinked from an index.
Everything a page sends is bounded (count, length, depth) before it is stored.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil.client.errors import ClientError

__all__ = ["ChatHistory", "HistoryInvalid", "HistoryLimits"]

_SCHEMA = """
PRAGMA secure_delete = ON;
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    updated REAL NOT NULL,
    body TEXT NOT NULL
);
"""
_ROLES = frozenset({"user", "assistant"})
_META_KEYS = frozenset(
    {
        "node",
        "mode",
        "attestation",
        "verification",
        "receipt",
        "receipt_id",
        "ticket_id",
        "payment",
        "incomplete",
        "error",
        "model",
    }
)


class HistoryInvalid(ClientError):
    """A conversation the page sent does not fit the history's shape or limits."""


@dataclass(frozen=True)
class HistoryLimits:
    max_conversations: int = 500  # kept at most; saving one more is refused
    max_messages: int = 400  # per conversation
    max_text_chars: int = 200_000  # one message's text
    max_title_chars: int = 200
    max_meta_chars: int = 300  # one verification field's value


def _text(value: Any, limit: int, what: str) -> str:
    if not isinstance(value, str):
        raise HistoryInvalid(f"{what} must be a string")
    if len(value) > limit:
        raise HistoryInvalid(f"{what} is longer than {limit} characters")
    return value


def _meta(value: Any, limits: HistoryLimits) -> dict[str, Any]:
    """The verification panel's fields of one answer: known keys, short scalar values."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HistoryInvalid("meta must be an object")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key not in _META_KEYS:
            raise HistoryInvalid(f"unknown meta field {str(key)[:40]!r}")
        if item is None or isinstance(item, bool):
            out[key] = item
        else:
            out[key] = _text(item, limits.max_meta_chars, f"meta.{key}")
    return out


def _valid_id(value: Any) -> str:
    if not isinstance(value, str):
        raise HistoryInvalid("id must be a string")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise HistoryInvalid("id must be a UUID") from None


def check_conversation(body: Any, limits: HistoryLimits) -> dict[str, Any]:
    """The conversation in `body` in its stored shape, or `HistoryInvalid` naming what is
    wrong (never quoting the text)."""
    if not isinstance(body, dict):
        raise HistoryInvalid("a conversation must be a JSON object")
    conv_id = _valid_id(body["id"]) if body.get("id") is not None else str(uuid.uuid4())
    title = _text(body.get("title", ""), limits.max_title_chars, "title")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise HistoryInvalid("messages must be a list")
    if len(messages) > limits.max_messages:
        raise HistoryInvalid(f"a conversation holds at most {limits.max_messages} messages")
    kept = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise HistoryInvalid(f"messages[{i}] must be an object")
        role = message.get("role")
        if role not in _ROLES:
            raise HistoryInvalid(f"messages[{i}].role must be user or assistant")
        content = _text(message.get("content"), limits.max_text_chars, f"messages[{i}].content")
        kept.append({"role": role, "content": content, "meta": _meta(message.get("meta"), limits)})
    return {"id": conv_id, "title": title, "messages": kept}


class ChatHistory:
    """Conversations in a private (0600) SQLite file; one connection, used under a lock."""

    def __init__(self, path: Path, limits: HistoryLimits | None = None) -> None:
        self.path = path
        self.limits = limits or HistoryLimits()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        os.close(fd)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def save(self, body: Any) -> dict[str, Any]:
        """Store (or replace) one conversation; returns its id and title."""
        conv = check_conversation(body, self.limits)
        encoded = json.dumps(conv["messages"], ensure_ascii=False)
        with self._lock:
            exists = self._db.execute(
                "SELECT 1 FROM conversations WHERE id = ?", (conv["id"],)
            ).fetchone()
            count = self._db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]
            if not exists and count >= self.limits.max_conversations:
                raise HistoryInvalid(
                    f"the history holds at most {self.limits.max_conversations} conversations; "
                    "delete some first"
                )
            self._db.execute(
                "INSERT OR REPLACE INTO conversations (id, title, updated, body) "
                "VALUES (?, ?, ?, ?)",
                (conv["id"], conv["title"], time.time(), encoded),
            )
        return {"id": conv["id"], "title": conv["title"]}

    def list(self) -> list[dict[str, Any]]:
        """Every conversation, newest first, with its messages."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, title, updated, body FROM conversations ORDER BY updated DESC"
            ).fetchall()
        return [
            {"id": r[0], "title": r[1], "updated": r[2], "messages": json.loads(r[3])} for r in rows
        ]

    def delete(self, conv_id: str) -> bool:
        """Delete one conversation (its bytes overwritten); False when there was none."""
        key = _valid_id(conv_id)
        with self._lock:
            gone = self._db.execute("DELETE FROM conversations WHERE id = ?", (key,)).rowcount
        return gone > 0

    def delete_all(self) -> int:
        """Delete every conversation and shrink the file; returns how many there were."""
        with self._lock:
            gone = self._db.execute("DELETE FROM conversations").rowcount
            self._db.execute("VACUUM")
        return int(gone)
