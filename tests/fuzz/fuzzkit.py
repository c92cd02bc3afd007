"""Shared pieces of the fuzz targets: settings, byte and JSON mutators, the typed-error check.

The mutators start from a valid message built by the real encoder and change it the way a
hostile or broken peer would: truncations, bit flips, inserted or deleted bytes, changed
length fields, huge declared lengths; for JSON, wrong types, missing and unknown keys, deep
nesting, huge numbers, non-JSON constants and bad escapes.
"""

from __future__ import annotations

import copy
import json
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st

from veil.wire.varint import encode_varint

T = TypeVar("T")


def fuzz(scale: float = 1.0) -> settings:
    """The `veil-fuzz` profile (tests/fuzz/conftest.py) with its example count times `scale`."""
    base = settings.get_profile("veil-fuzz")
    return settings(base, max_examples=max(5, int(base.max_examples * scale)))


def outcome(fn: Callable[[], T], errors: type[BaseException] | tuple[type[BaseException], ...]):
    """(value, None) or (None, error) when `fn` raises one of `errors`; anything else fails."""
    try:
        return fn(), None
    except errors as err:
        return None, err
    except BaseException as err:  # the property: nothing but the typed errors
        raise AssertionError(f"untyped {type(err).__name__}: {err!r}"[:500]) from err


@contextmanager
def bounded_memory(limit: int) -> Iterator[None]:
    """Fail if the block allocates more than `limit` bytes at its peak (tracemalloc)."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= limit, f"peak allocation {peak} bytes, over the bound of {limit}"


# --- bytes ---------------------------------------------------------------------------------------

# Varints a peer might declare: boundaries of each size, the largest, and non-minimal spellings.
HUGE_VARINTS = [
    encode_varint(v) for v in (0x3F, 0x40, 0x3FFF, 0x4000, 2**30 - 1, 2**30, 2**62 - 1)
] + [b"\x40\x00", b"\x80\x00\x00\x01", b"\xc0" + bytes(7), b"\xff" * 8]
INTERESTING_BYTES = [0x00, 0x01, 0x3F, 0x40, 0x7F, 0x80, 0xBF, 0xC0, 0xFE, 0xFF]
BIG_ENDIAN = [b"\xff\xff", b"\x00\x00", b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff", b"\x00" * 4]
_BYTE_OPS = ("truncate", "flip", "set", "insert", "delete", "duplicate", "varint", "bigendian")


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes, max_ops: int = 3) -> bytes:
    """`data` with 1 to `max_ops` random edits."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(_BYTE_OPS))
        i = draw(st.integers(0, len(buf)))
        if op == "truncate":
            del buf[i:]
        elif op == "flip" and buf:
            buf[min(i, len(buf) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[min(i, len(buf) - 1)] = draw(
                st.sampled_from(INTERESTING_BYTES) | st.integers(0, 255)
            )
        elif op == "insert":
            buf[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[i : draw(st.integers(i, min(len(buf), i + 16)))]
        elif op == "duplicate":
            buf[i:i] = buf[i : draw(st.integers(i, min(len(buf), i + 32)))]
        elif op == "varint":
            buf[i:i] = draw(st.sampled_from(HUGE_VARINTS))
        elif op == "bigendian":
            buf[i : i + 2] = draw(st.sampled_from(BIG_ENDIAN))
    return bytes(buf)


def splits(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """`data` cut into pieces at arbitrary points (what a network delivers)."""

    def cut(points: list[int]) -> list[bytes]:
        ends = [*sorted(points), len(data)]
        return [data[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]

    return st.lists(st.integers(0, len(data)), max_size=8).map(cut)


def maybe_mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` unchanged, mutated (lightly or heavily), or replaced by random bytes."""
    return st.one_of(
        st.just(data), mutated_bytes(data), mutated_bytes(data, 8), st.binary(max_size=256)
    )


# --- JSON ----------------------------------------------------------------------------------------

JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**300),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _deep(depth: int, kind: str) -> str:
    if kind == "[":
        return "[" * depth + "]" * depth
    if kind == "{":
        return '{"a":' * depth + "1" + "}" * depth
    return "[" * depth  # unclosed: only a decoder that recurses before it fails notices


# Raw JSON text a serializer never writes: spliced in where a value was.
RAW_TOKENS = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "1.0", "1e2", "true", "[]"]),
    st.sampled_from(["9" * 5000, "-" + "9" * 4301, str(2**64), str(-(2**63) - 1), str(2**256)]),
    st.sampled_from(
        [
            '"\\ud800"',
            '"\\udfff\\ud800"',
            '"\\u0000"',
            '"\u00b2\u00b3"',
            '"\u0661\u0662"',
            '"0x"',
            '"0X00"',
            '"  1"',
            '"+1"',
            '""',
            '"' + "A" * 70_000 + '"',
            '"' + '\\"' * 2000,
        ]
    ),
    st.builds(_deep, st.sampled_from([20, 33, 200, 1500, 20_000]), st.sampled_from("[{(")),
)
_MARK = "\x00veil-raw-{}\x00"


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _paths(value, (*prefix, i))


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        obj = obj[part]
    return obj


_JSON_OPS = ("replace", "raw", "raw", "delete", "add", "wrap", "stringify", "duplicate-key")


@st.composite
def mutated_json(draw: st.DrawFn, obj: Any, max_ops: int = 3) -> bytes:
    """`obj` with 1 to `max_ops` structural edits, serialized (some edits only exist as text)."""
    obj = copy.deepcopy(obj)
    raws: list[str] = []
    duplicate: tuple[str, str] | None = None
    for _ in range(draw(st.integers(1, max_ops))):
        path = draw(st.sampled_from(list(_paths(obj))))
        op = draw(st.sampled_from(_JSON_OPS))
        value: Any
        if op == "replace":
            value = draw(JSON_VALUES)
        elif op == "raw":
            raws.append(draw(RAW_TOKENS))
            value = _MARK.format(len(raws) - 1)
        elif op == "wrap":
            value = [_get(obj, path)]
        elif op == "stringify":
            current = _get(obj, path)
            value = current if isinstance(current, str) else json.dumps(current)
        else:
            value = None
        container = _get(obj, path[:-1]) if path else None
        if op == "delete" and path:
            del container[path[-1]]
        elif op in ("add", "duplicate-key"):
            target = _get(obj, path)
            if isinstance(target, dict):
                key = draw(st.text(max_size=8) | st.sampled_from(sorted(target) or ["x"]))
                if op == "duplicate-key" and target:
                    name = draw(st.sampled_from(sorted(target)))
                    duplicate = (json.dumps(name), json.dumps(draw(JSON_VALUES)))
                else:
                    target[key] = draw(JSON_VALUES)
            elif isinstance(target, list):
                target.insert(draw(st.integers(0, len(target))), draw(JSON_VALUES))
        elif op in ("replace", "raw", "wrap", "stringify"):
            if path:
                container[path[-1]] = value
            else:
                obj = value
    text = json.dumps(obj, sort_keys=draw(st.booleans()), separators=(",", ":"))
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(_MARK.format(i)), raw)
    if duplicate is not None and text.startswith("{") and len(text) > 2:
        text = "{" + duplicate[0] + ":" + duplicate[1] + "," + text[1:]
    return text.encode("utf-8", "surrogatepass")


def json_inputs(obj: Any) -> st.SearchStrategy[bytes]:
    """Encoded `obj` as it is, structurally mutated, or mutated as bytes."""
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return st.one_of(
        st.just(raw),
        mutated_json(obj),
        mutated_json(obj).flatmap(mutated_bytes),
        mutated_bytes(raw),
    )


def deep_json(max_depth: int = 70_000) -> st.SearchStrategy[bytes]:
    """Deeply nested JSON (closed or not), alone or as a field of an object."""
    body = st.builds(_deep, st.integers(1, max_depth), st.sampled_from("[{("))
    return st.one_of(body, body.map(lambda b: '{"a":' + b + "}")).map(str.encode)
