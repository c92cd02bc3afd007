"""The chat history: private, bounded, and deleted for real (the bytes leave the file)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from veil.client.web import ChatHistory, HistoryInvalid, HistoryLimits

SECRET = "amethyst-walrus-8812 is a private thought"


def conversation(text: str = SECRET, **extra: object) -> dict[str, object]:
    return {
        "id": str(uuid.uuid4()),
        "title": "t",
        "messages": [
            {"role": "user", "content": text},
            {
                "role": "assistant",
                "content": "ok",
                "meta": {"node": "0xabc", "receipt": "verified", "incomplete": False},
            },
        ],
        **extra,
    }


def test_saved_conversations_come_back_newest_first(tmp_path: Path) -> None:
    history = ChatHistory(tmp_path / "h" / "chat.sqlite")
    first, second = conversation("one"), conversation("two")
    history.save(first)
    history.save(second)
    listed = history.list()
    assert [c["id"] for c in listed] == [second["id"], first["id"]]
    assert listed[1]["messages"][1]["meta"]["receipt"] == "verified"
    history.save({**first, "title": "renamed"})  # a save replaces
    assert [c["title"] for c in history.list()] == ["renamed", "t"]
    assert (tmp_path / "h" / "chat.sqlite").stat().st_mode & 0o777 == 0o600
    history.close()


def test_delete_removes_the_text_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite"
    history = ChatHistory(path)
    kept = conversation("a conversation that stays")
    gone = conversation()
    history.save(kept)
    history.save(gone)
    assert SECRET.encode() in path.read_bytes()
    assert history.delete(str(gone["id"]))
    assert not history.delete(str(gone["id"]))
    assert SECRET.encode() not in path.read_bytes()
    assert b"a conversation that stays" in path.read_bytes()
    assert history.delete_all() == 1
    assert b"a conversation that stays" not in path.read_bytes()
    assert history.list() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.sqlite"]  # no journal left
    history.close()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ([], "must be a JSON object"),
        ({"messages": "x"}, "messages must be a list"),
        ({"messages": [{"role": "system", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": 5}]}, "must be a string"),
        ({"messages": [{"role": "user", "content": "x" * 101}]}, "longer than 100"),
        ({"messages": [{"role": "user", "content": "x", "meta": {"evil": 1}}]}, "unknown meta"),
        ({"messages": [{"role": "user", "content": "x", "meta": {"node": {}}}]}, "meta.node"),
        ({"id": "../../etc", "messages": []}, "UUID"),
        ({"messages": [{"role": "user", "content": "x"}] * 11}, "at most 10 messages"),
    ],
)
def test_bad_conversations_are_refused_and_nothing_is_stored(
    tmp_path: Path, body: object, why: str
) -> None:
    history = ChatHistory(
        tmp_path / "chat.sqlite", HistoryLimits(max_messages=10, max_text_chars=100)
    )
    with pytest.raises(HistoryInvalid, match=why):
        history.save(body)
    assert history.list() == []
    history.close()


def test_the_number_of_conversations_is_bounded(tmp_path: Path) -> None:
    history = ChatHistory(tmp_path / "chat.sqlite", HistoryLimits(max_conversations=2))
    a, b = conversation(), conversation()
    history.save(a)
    history.save(b)
    with pytest.raises(HistoryInvalid, match="at most 2 conversations"):
        history.save(conversation())
    history.save({**a, "title": "still replaceable"})
    history.close()
