"""veil.wire.http (the capped body reader, the OpenAI error) and veil.wire.boundedjson."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veil.errors import VeilError
from veil.wire import boundedjson
from veil.wire.chat import ChatRequestInvalid, parse_chat_request
from veil.wire.errors import Malformed, MessageTooLarge
from veil.wire.http import OpenAIError, error_body, read_capped


class _Req:
    def __init__(self, pieces: list[bytes], declared: int | None = None) -> None:
        self.headers = {} if declared is None else {"content-length": str(declared)}
        self.pieces = pieces
        self.read = 0

    async def stream(self):  # type: ignore[no-untyped-def]
        for piece in self.pieces:
            self.read += 1
            yield piece


def test_read_capped_reads_up_to_the_limit() -> None:
    assert asyncio.run(read_capped(_Req([b"ab", b"cd"]), 4)) == b"abcd"


def test_read_capped_refuses_a_declared_length_before_reading() -> None:
    req = _Req([b"x"], declared=10)
    with pytest.raises(MessageTooLarge):
        asyncio.run(read_capped(req, 4))
    assert req.read == 0


def test_read_capped_stops_at_the_first_piece_over_the_limit() -> None:
    req = _Req([b"abc", b"def", b"ghi"])
    with pytest.raises(MessageTooLarge):
        asyncio.run(read_capped(req, 4))
    assert req.read == 2


def test_openai_error_is_a_veil_error_with_the_openai_body() -> None:
    err = OpenAIError(404, "no such model", code="model_not_found", param="model")
    assert isinstance(err, VeilError)
    assert err.body() == error_body(
        "no such model", "invalid_request_error", "model", "model_not_found"
    )
    assert err.body()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("opener,closer", [("[", "]"), ('{"a":', "}")])
def test_deep_nesting_is_refused_before_decoding(opener: str, closer: str) -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)  # what py_ecc does at import
    try:
        deep = (opener * 100_000 + "1" + closer * 100_000).encode()
        with pytest.raises(Malformed, match="deeper"):
            boundedjson.loads(deep, max_bytes=1 << 21)
    finally:
        sys.setrecursionlimit(limit)


def test_chat_parser_refuses_deep_nesting_as_a_typed_400() -> None:
    body = b'{"model":"m","messages":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    with pytest.raises(ChatRequestInvalid, match="nests deeper"):
        parse_chat_request(body)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"a": "[[[[[[[[[[{{{{{{{{" * 10, "b": ['"\\]]]]']})
    assert boundedjson.loads(text, max_bytes=10_000, max_depth=2) == json.loads(text)


def test_size_is_checked_first() -> None:
    with pytest.raises(MessageTooLarge):
        boundedjson.loads(b"[1,2,3]", max_bytes=3)


def test_cap_recursion_limit_lowers_only() -> None:
    before = sys.getrecursionlimit()
    try:
        sys.setrecursionlimit(100_000)
        assert boundedjson.cap_recursion_limit() == 100_000
        assert sys.getrecursionlimit() == boundedjson.SAFE_RECURSION_LIMIT
        sys.setrecursionlimit(500)
        boundedjson.cap_recursion_limit()
        assert sys.getrecursionlimit() == 500
    finally:
        sys.setrecursionlimit(before)


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\ab'), inner, max_size=3)
    ),
    max_leaves=30,
)


@given(_json)
def test_check_depth_matches_the_real_depth(value: object) -> None:
    text = json.dumps(value)
    depth = _depth(value)
    assert boundedjson.check_depth(text, limit=depth)
    if depth:
        assert not boundedjson.check_depth(text, limit=depth - 1)
