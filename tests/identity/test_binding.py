"""The report-data binding: every input changes it; model order does not."""

from __future__ import annotations

import pytest

from veil.identity import binding_hash, freshness_nonce, report_data

ADDR = "0x" + "11" * 20
KEYS = b"\x00\x29" + bytes(range(41))
MODELS = [b"\x01" * 32, b"\x02" * 32]


def test_layout_is_binding_then_nonce() -> None:
    data = report_data(ADDR, KEYS, MODELS, issued_at=1000)
    assert len(data) == 64
    assert data[:32] == binding_hash(ADDR, KEYS, MODELS)
    assert data[32:] == freshness_nonce(1000)
    nonce = b"\x07" * 32
    assert report_data(ADDR, KEYS, MODELS, nonce=nonce)[32:] == nonce


def test_every_input_changes_the_binding() -> None:
    base = binding_hash(ADDR, KEYS, MODELS)
    assert binding_hash("0x" + "12" * 20, KEYS, MODELS) != base
    assert binding_hash(ADDR, KEYS[:-1] + b"\x00", MODELS) != base
    assert binding_hash(ADDR, KEYS, MODELS[:1]) != base
    assert binding_hash(ADDR, KEYS, [*MODELS, b"\x03" * 32]) != base
    assert freshness_nonce(1000) != freshness_nonce(1001)


def test_model_order_and_repeats_do_not_matter() -> None:
    assert binding_hash(ADDR, KEYS, MODELS) == binding_hash(ADDR, KEYS, [*MODELS[::-1], MODELS[0]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({}, "exactly one"), ({"issued_at": 1, "nonce": b"\x00" * 32}, "exactly one")],
)
def test_report_data_needs_exactly_one_nonce_source(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        report_data(ADDR, KEYS, MODELS, **kwargs)


def test_bad_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        binding_hash("0x1234", KEYS, MODELS)
    with pytest.raises(ValueError):
        binding_hash(ADDR, KEYS, [b"short"])
    with pytest.raises(ValueError):
        report_data(ADDR, KEYS, MODELS, nonce=b"short")
