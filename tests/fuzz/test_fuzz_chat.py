"""Fuzz: OpenAI chat requests (`veil.wire.chat.parse_chat_request`) and their sampling checks.

Property: `parse_chat_request` returns a request or raises `ChatRequestInvalid`, and so does
`to_sampling` on what it returns; a valid request keeps its fields and round-trips through its
JSON form; nesting deeper than `MAX_JSON_DEPTH` is refused before decoding, in linear time.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fuzzkit import deep_json, fuzz, json_inputs, mutated_bytes, outcome
from hypothesis import given
from hypothesis import strategies as st

from veil.wire.boundedjson import check_depth
from veil.wire.chat import ChatRequestInvalid, parse_chat_request

ROLES = ["system", "developer", "user", "assistant"]
text = st.text(max_size=24)
content = text | st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": text}), max_size=3
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(ROLES), "content": content}, optional={"name": text}
    ),
    min_size=1,
    max_size=3,
)
OPTIONAL = {
    "max_tokens": st.integers(1, 4096),
    "max_completion_tokens": st.integers(1, 4096),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1),
    "stop": st.text(min_size=1, max_size=8) | st.lists(st.text(min_size=1, max_size=8), max_size=4),
    "seed": st.integers(-(2**63) + 1, 2**63 - 1),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "n": st.just(1),
    "user": text,
    "tools": st.just([]),
}
chat_requests = st.fixed_dictionaries(
    {"model": st.text(min_size=1, max_size=16), "messages": messages}, optional=OPTIONAL
)


def _check(raw: bytes) -> Any:
    """The property for any body: typed refusal, or a request whose checks are typed too."""
    req, _ = outcome(lambda: parse_chat_request(raw), ChatRequestInvalid)
    if req is not None:
        outcome(lambda: req.to_sampling(max_tokens_limit=512), ChatRequestInvalid)
        for m in req.messages:
            assert isinstance(m.text(), str)
        req.model_dump_json()
    return req


@fuzz(2)
@given(chat_requests)
def test_valid_requests(body: dict[str, Any]) -> None:
    req = _check(json.dumps(body).encode())
    assert req is not None
    assert req.model == body["model"]
    assert [m.role for m in req.messages] == [m["role"] for m in body["messages"]]
    assert req.to_sampling().stop == req.stop_sequences
    again = parse_chat_request(req.model_dump_json(exclude_unset=True).encode())
    assert again == req


@fuzz(6)
@given(chat_requests.flatmap(json_inputs))
def test_mutated_requests(raw: bytes) -> None:
    _check(raw)


@fuzz(1)
@given(deep_json() | deep_json(40).flatmap(mutated_bytes))
def test_deep_nesting(raw: bytes) -> None:
    req = _check(raw)
    assert req is None or check_depth(raw)


@fuzz(2)
@given(st.binary(max_size=512) | st.text(max_size=256).map(str.encode))
def test_random_bodies(raw: bytes) -> None:
    _check(raw)


def test_regression_long_integer_is_a_typed_refusal() -> None:
    """Found by this target: an integer of more than 4300 digits (Python's conversion limit)
    raised a bare ValueError from json.loads, which the node would have answered with a 500."""
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":' + b"9" * 5000
    with pytest.raises(ChatRequestInvalid, match="number"):
        parse_chat_request(body + b"}")


def test_regression_depth_check_is_linear() -> None:
    """Found while writing these targets: the depth scan's string regex backtracked
    quadratically over an unterminated string of escaped quotes (120 KB took about a minute;
    512 KB, hours)."""
    raw = b'{"model":"' + b'\\"' * 60_000
    start = time.perf_counter()
    with pytest.raises(ChatRequestInvalid):
        parse_chat_request(raw)
    assert time.perf_counter() - start < 3.0
