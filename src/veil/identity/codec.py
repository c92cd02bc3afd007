"""Strict JSON and field codecs shared by descriptors and receipts.

Signed objects are encoded as canonical JSON (sorted keys, no spaces, ASCII only, integers
only), so a signer and a verifier that parse and re-encode get the same bytes. Parsing is strict:
duplicate keys, floats, NaN, unknown or missing fields and non-canonical spellings (upper-case
hex, unpadded base64) are refused, each with the error type and field name the caller gives.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from eth_utils import is_checksum_address

from veil.identity.errors import IdentityError
from veil.wire.boundedjson import check_depth

__all__ = [
    "b64",
    "canonical_json",
    "check_depth",
    "get_address",
    "get_b64",
    "get_hex",
    "get_int",
    "get_str",
    "hex0x",
    "parse_json_object",
    "require_fields",
    "to_bytes32",
]

_HEX = re.compile(r"0x(?:[0-9a-f]{2})*")


def canonical_json(obj: Any) -> bytes:
    """The one byte encoding of a JSON value built from dicts, lists, str and int."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def hex0x(data: bytes) -> str:
    """Lower-case hex with a 0x prefix: the spelling of fixed-size byte fields."""
    return "0x" + data.hex()


def b64(data: bytes) -> str:
    """Padded standard base64: the spelling of variable-size byte fields."""
    return base64.b64encode(data).decode("ascii")


def _no_float(text: str) -> Any:
    raise ValueError("floats are not allowed")


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not allowed")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_json_object(
    data: bytes | str, error: type[IdentityError], *, check: str, max_bytes: int
) -> dict[str, Any]:
    """A JSON object from untrusted bytes, or `error(check=check)`."""
    if len(data) > max_bytes:
        raise error(f"larger than {max_bytes} bytes", check=check)
    if not check_depth(data):
        raise error("nested too deep", check=check)
    try:
        obj = json.loads(
            data,
            parse_float=_no_float,
            parse_constant=_no_constant,
            object_pairs_hook=_no_duplicates,
        )
    except (ValueError, RecursionError, UnicodeDecodeError) as err:
        raise error(f"not strict JSON: {type(err).__name__}", check=check) from None
    if not isinstance(obj, dict):
        raise error("not a JSON object", check=check)
    return obj


def require_fields(
    obj: Mapping[str, Any],
    fields: frozenset[str],
    error: type[IdentityError],
    *,
    check: str,
    optional: frozenset[str] = frozenset(),
) -> None:
    """Exactly these keys (plus any of `optional`): a missing or an unknown one is refused."""
    missing = sorted(fields - obj.keys())
    if missing:
        raise error(f"missing field(s): {', '.join(missing)}", check=check)
    unknown = sorted(obj.keys() - fields - optional)
    if unknown:
        raise error(f"unknown field(s): {', '.join(unknown[:5])}", check=check)


def get_str(
    obj: Mapping[str, Any],
    key: str,
    error: type[IdentityError],
    *,
    check: str,
    max_len: int,
    pattern: re.Pattern[str] | None = None,
) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise error("must be a string", check=check)
    if not value or len(value) > max_len:
        raise error(f"must be 1 to {max_len} characters", check=check)
    if not value.isprintable() or (pattern is not None and not pattern.fullmatch(value)):
        raise error("has characters it may not have", check=check)
    return value


def get_int(
    obj: Mapping[str, Any],
    key: str,
    error: type[IdentityError],
    *,
    check: str,
    lo: int = 0,
    hi: int = 2**64 - 1,
) -> int:
    value = obj.get(key)
    if type(value) is not int:  # bool is an int subclass; refuse it too
        raise error("must be an integer", check=check)
    if not lo <= value <= hi:
        raise error(f"must be between {lo} and {hi}", check=check)
    return value


def get_hex(
    obj: Mapping[str, Any],
    key: str,
    error: type[IdentityError],
    *,
    check: str,
    length: int | None = None,
    max_len: int = 64,
) -> bytes:
    value = obj.get(key)
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise error("must be lower-case 0x-prefixed hex", check=check)
    raw = bytes.fromhex(value[2:])
    if length is not None:
        if len(raw) != length:
            raise error(f"must be {length} bytes", check=check)
    elif not 0 < len(raw) <= max_len:
        raise error(f"must be 1 to {max_len} bytes", check=check)
    return raw


def get_b64(
    obj: Mapping[str, Any], key: str, error: type[IdentityError], *, check: str, max_len: int
) -> bytes:
    value = obj.get(key)
    if not isinstance(value, str):
        raise error("must be a base64 string", check=check)
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise error("not valid base64", check=check) from None
    if b64(raw) != value:
        raise error("base64 is not in canonical (padded, standard) form", check=check)
    if not 0 < len(raw) <= max_len:
        raise error(f"must be 1 to {max_len} bytes", check=check)
    return raw


def get_address(obj: Mapping[str, Any], key: str, error: type[IdentityError], *, check: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or len(value) != 42 or not is_checksum_address(value):
        raise error("must be an EIP-55 checksummed address", check=check)
    return value


def to_bytes32(value: bytes | str, *, what: str) -> bytes:
    """32 bytes from bytes or hex (with or without 0x); ValueError naming `what` otherwise."""
    if isinstance(value, str):
        text = value[2:] if value.startswith(("0x", "0X")) else value
        try:
            value = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"{what} is not hex") from None
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise ValueError(f"{what} must be 32 bytes")
    return bytes(value)
