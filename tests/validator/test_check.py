"""The validator on real answers from the builtin engine: honest ones pass (greedy, seeded
sampling, decoded in a batch), cheating ones fail at the step that names the cheat."""

from __future__ import annotations

import copy
import dataclasses
import random

import pytest

from veil.engine import ChatMessage, Engine, Finished, SamplingParams, TokenDelta
from veil.validator import Answer, ChatRequest, ValidatorError, check_answer, load_reference

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of France?",
    "Tell me a joke about computers.",
    "Name three primary colors.",
    "Write one sentence about the sea.",
]


def _request(q: str, **kw) -> ChatRequest:  # type: ignore[no-untyped-def]
    kw.setdefault("max_tokens", 48)
    return ChatRequest(messages=(ChatMessage("user", q),), **kw)


def _params(req: ChatRequest) -> SamplingParams:
    return SamplingParams(
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        seed=req.seed,
        stop=req.stop,
    )


def _collect(handle) -> Answer:  # type: ignore[no-untyped-def]
    ids: list[int] = []
    text = ""
    for ev in handle:
        if isinstance(ev, TokenDelta):
            ids.append(ev.token_id)
            text += ev.text
        elif isinstance(ev, Finished):
            return Answer(tuple(ids), text + ev.text, ev.reason, ev.completion_tokens)
    raise AssertionError("generation failed")


def _generate(engine, reqs: list[ChatRequest]) -> list[Answer]:  # type: ignore[no-untyped-def]
    """Submit all at once, so the engine decodes them in one batch."""
    handles = [engine.submit(engine.encode_chat(list(r.messages)), _params(r)) for r in reqs]
    return [_collect(h) for h in handles]


def test_honest_greedy_answers_pass(loaded_model, builtin_engine) -> None:  # type: ignore[no-untyped-def]
    reqs = [_request(q, temperature=0.0) for q in QUESTIONS]
    for req in reqs:  # one at a time
        (ans,) = _generate(builtin_engine, [req])
        report = check_answer(loaded_model, req, ans)
        assert report.passed, report.as_dict()
    for req, ans in zip(reqs, _generate(builtin_engine, reqs), strict=True):  # batched
        report = check_answer(loaded_model, req, ans)
        assert report.passed, report.as_dict()


def test_honest_sampled_answers_pass(loaded_model, builtin_engine) -> None:  # type: ignore[no-untyped-def]
    reqs = [_request(q, temperature=0.8, seed=i) for i, q in enumerate(QUESTIONS)]
    reqs += [_request(q, temperature=1.0, top_p=0.9, seed=7 + i) for i, q in enumerate(QUESTIONS)]
    reqs += [_request(QUESTIONS[0], temperature=0.7, stop=(".",), seed=3)]
    for req, ans in zip(reqs, _generate(builtin_engine, reqs), strict=True):
        report = check_answer(loaded_model, req, ans)
        assert report.passed, report.as_dict()


def test_a_model_with_layers_dropped_is_caught(loaded_model) -> None:  # type: ignore[no-untyped-def]
    cheap_model = copy.deepcopy(loaded_model.model)
    keep = cheap_model.model.layers[: len(cheap_model.model.layers) // 2]
    cheap_model.model.layers = keep
    cheap_model.config.num_hidden_layers = len(keep)
    cheap = dataclasses.replace(loaded_model, model=cheap_model)
    engine = Engine(cheap, max_batch=8, context_length=2048)
    try:
        greedy = [_request(q, temperature=0.0, max_tokens=32) for q in QUESTIONS]
        answers = _generate(engine, greedy)
    finally:
        engine.close()
    for req, ans in zip(greedy, answers, strict=True):
        report = check_answer(loaded_model, req, ans)
        assert not report.passed and "greedy" in report.failed(), report.as_dict()


def test_made_up_tokens_fail(loaded_model) -> None:  # type: ignore[no-untyped-def]
    tok = loaded_model.tokenizer
    rng = random.Random(1)
    ids = tuple(rng.randrange(1000, 40000) for _ in range(32))
    text = tok.decode(list(ids), skip_special_tokens=True)
    for req in (
        _request(QUESTIONS[0], temperature=0.0, max_tokens=32),
        _request(QUESTIONS[0], temperature=1.0, seed=1, max_tokens=32),
    ):
        report = check_answer(loaded_model, req, Answer(ids, text, "length", 32))
        assert not report.passed
        assert set(report.failed()) & {"greedy", "sample-set", "likelihood"}, report.as_dict()


def test_out_of_vocabulary_tokens_fail(loaded_model) -> None:  # type: ignore[no-untyped-def]
    req = _request(QUESTIONS[0], temperature=0.0, max_tokens=2)
    report = check_answer(loaded_model, req, Answer((1, 10**9), "x", "length", 2))
    assert report.failed() == ["tokens"]


def test_shape_cheats_fail(loaded_model, builtin_engine) -> None:  # type: ignore[no-untyped-def]
    long_req = _request(QUESTIONS[1], temperature=0.0, max_tokens=400)
    short_req = dataclasses.replace(long_req, max_tokens=12)
    (full,) = _generate(builtin_engine, [long_req])
    assert full.finish_reason == "stop" and full.completion_tokens == len(full.token_ids) + 1
    assert check_answer(loaded_model, long_req, full).passed
    # truncated, yet claims a natural stop
    cut = full.token_ids[:12]
    cut_text = loaded_model.tokenizer.decode(list(cut), skip_special_tokens=True)
    fake_stop = Answer(cut, cut_text, "stop", 12)
    assert "finish" in check_answer(loaded_model, long_req, fake_stop).failed()
    # claims an end-of-sequence the reference would not have produced there
    fake_eos = Answer(cut, cut_text, "stop", 13)
    assert "eos" in check_answer(loaded_model, long_req, fake_eos).failed()
    # honest truncation passes; "length" before max_tokens does not
    honest_cut = Answer(cut, cut_text, "length", 12)
    assert check_answer(loaded_model, short_req, honest_cut).passed
    assert "finish" in check_answer(loaded_model, long_req, honest_cut).failed()
    # wrong counts, and text that is not the tokens
    assert (
        "usage"
        in check_answer(
            loaded_model,
            long_req,
            dataclasses.replace(full, completion_tokens=full.completion_tokens + 5),
        ).failed()
    )
    assert (
        "text"
        in check_answer(
            loaded_model, long_req, dataclasses.replace(full, text=full.text + " extra")
        ).failed()
    )


def test_reference_with_other_weights_is_refused(loaded_model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidatorError):
        load_reference("00" * 32)
    assert load_reference(loaded_model.weights_sha256).weights_sha256 == loaded_model.weights_sha256
