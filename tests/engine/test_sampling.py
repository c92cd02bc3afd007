"""Sampling parameters and incremental text, without the model."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from veil.engine import InvalidGenerationRequest, Sampler, SamplingParams
from veil.engine.detokenize import IncrementalText


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"stop": ("",)}, "stop"),
        ({"stop": ("a", "b", "c", "d", "e")}, "stop"),
        ({"seed": 2**70}, "seed"),
    ],
)
def test_out_of_range_parameters_are_named(kwargs: dict, param: str) -> None:
    with pytest.raises(InvalidGenerationRequest) as info:
        SamplingParams(**kwargs)
    assert info.value.param == param


def test_greedy_takes_the_argmax() -> None:
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert Sampler(SamplingParams(temperature=0))(logits) == 1


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.log(torch.tensor([0.6, 0.3, 0.05, 0.05]))
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=7))
    assert {sampler(logits) for _ in range(200)} == {0}
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.85, seed=7))
    assert {sampler(logits) for _ in range(400)} == {0, 1}


def test_same_seed_same_draws() -> None:
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    a = Sampler(SamplingParams(temperature=1.0, seed=42))
    b = Sampler(SamplingParams(temperature=1.0, seed=42))
    assert [a(logits) for _ in range(50)] == [b(logits) for _ in range(50)]


class CharTokenizer:
    """One token per byte, decoded as UTF-8 with replacement, like a byte-level BPE."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


@given(
    text=st.text(min_size=0, max_size=60),
    stops=st.lists(st.text(min_size=1, max_size=4), max_size=3),
)
def test_streamed_text_equals_final_text_and_never_shows_a_stop(
    text: str, stops: list[str]
) -> None:
    inc = IncrementalText(CharTokenizer(), tuple(stops))
    shown = ""
    for b in text.encode():
        shown += inc.add(b)
        if inc.stopped:
            break
    if not inc.stopped:
        shown += inc.flush()
    cuts = [text.find(s) for s in stops if s in text]
    expected = text[: min(cuts)] if cuts else text
    assert shown == expected
    assert not any(s in shown for s in stops)
