"""Each in-process backend on the real packaged model: determinism, batching, cancellation,
usage, stops. `builtin` is the reference; `ctranslate2` runs the same tests (parametrized)."""

from __future__ import annotations

import hashlib
import threading

import pytest

from support.net import wait_idle
from veil.engine import ChatMessage, Failed, Finished, SamplingParams, TokenDelta

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of France?",
    "Tell me a joke about computers.",
    "Name three primary colors.",
    "Write one sentence about the sea.",
]


BACKENDS = ["builtin", "ctranslate2"]


@pytest.fixture(params=BACKENDS)
def engine(request):  # type: ignore[no-untyped-def]
    """Each in-process backend (session-scoped underneath: loaded once)."""
    return request.getfixturevalue("builtin_engine" if request.param == "builtin" else "ct2_engine")


@pytest.fixture(params=BACKENDS)
def make_engine(request):  # type: ignore[no-untyped-def]
    """A factory of fresh engines of each backend over the session's loaded model."""
    if request.param == "builtin":
        from veil.engine import Engine

        loaded = request.getfixturevalue("loaded_model")
        return lambda **kw: Engine(loaded, **kw)
    from veil.engine.ct2 import Ct2Engine

    model = request.getfixturevalue("ct2_model")
    return lambda **kw: Ct2Engine(model, **kw)


def run(engine, prompt_ids, params):  # type: ignore[no-untyped-def]
    tokens, text, finished = [], "", None
    for event in engine.submit(prompt_ids, params):
        if isinstance(event, TokenDelta):
            tokens.append(event.token_id)
            text += event.text
        elif isinstance(event, Finished):
            text += event.text
            finished = event
        else:
            raise AssertionError(f"generation failed: {event}")
    return tokens, text, finished


NEAR_TIE = 1.0  # logits, in the engine's own full-pass re-score (as test_backends_agree)


def assert_equal_but_for_a_near_tie(engine, ids, a, b) -> None:  # type: ignore[no-untyped-def]
    """Equal, or equal up to a token where the engine's own top two were within NEAR_TIE."""
    at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if at is None:  # equal as far as both went (one may have ended at end of sequence)
        return
    logits = engine.next_logits(ids + a[:at])
    gap = abs(float(logits[a[at]] - logits[b[at]]))
    assert gap < NEAR_TIE, f"token {at} parted by {gap} logits"


def prompt(engine, question: str) -> list[int]:  # type: ignore[no-untyped-def]
    return engine.encode_chat([ChatMessage("user", question)])


def test_weights_digest_is_sha256_of_the_gguf(loaded_model) -> None:  # type: ignore[no-untyped-def]
    path = loaded_model.files.weight_files[0]
    assert path.suffix == ".gguf"
    assert loaded_model.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_greedy_is_deterministic_and_answers(engine) -> None:  # type: ignore[no-untyped-def]
    ids = prompt(engine, QUESTIONS[0])
    a = run(engine, ids, SamplingParams(max_tokens=24, temperature=0))
    b = run(engine, ids, SamplingParams(max_tokens=24, temperature=0))
    assert a[0] == b[0] and a[1] == b[1]
    assert "Paris" in a[1]


def test_seeded_sampling_is_deterministic(engine) -> None:  # type: ignore[no-untyped-def]
    ids = prompt(engine, QUESTIONS[1])
    params = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, seed=1234)
    first = run(engine, ids, params)[0]
    assert run(engine, ids, params)[0] == first
    others = {
        tuple(run(engine, ids, SamplingParams(max_tokens=20, temperature=1.5, seed=s))[0])
        for s in (1, 2, 3)
    }
    assert len(others) > 1, "different seeds should explore different tokens"


def test_concurrent_streams_match_solo_runs_and_share_batches(engine) -> None:  # type: ignore[no-untyped-def]
    prompts = [prompt(engine, q) for q in QUESTIONS]
    params = SamplingParams(max_tokens=24, temperature=0)
    solo = [run(engine, p, params)[0] for p in prompts]
    steps_before = dict(engine.stats.batch_sizes)
    results: list[list[int] | None] = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = run(engine, prompts[i], params)[0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if engine.kind == "builtin":
        assert results == solo  # masked padding: the same tokens alone or batched
    else:  # the batch shape changes int8 rounding: only near ties may flip
        for ids, got, alone in zip(prompts, results, solo, strict=True):
            assert_equal_but_for_a_near_tie(engine, ids, got, alone)
    batched_steps = sum(
        n - steps_before.get(size, 0) for size, n in engine.stats.batch_sizes.items() if size > 1
    )
    assert batched_steps > 0, "concurrent requests were never decoded together"


def test_seeded_streams_side_by_side_match_solo_runs(engine) -> None:  # type: ignore[no-untyped-def]
    prompts = [prompt(engine, q) for q in QUESTIONS]
    params = [SamplingParams(max_tokens=12, temperature=0.9, seed=40 + i) for i in range(4)]
    solo = [run(engine, p, s)[0] for p, s in zip(prompts, params, strict=True)]
    results: list[list[int] | None] = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = run(engine, prompts[i], params[i])[0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == solo


def test_unseeded_sampled_streams_side_by_side_count_what_they_stream(engine) -> None:  # type: ignore[no-untyped-def]
    prompts = [prompt(engine, q) for q in QUESTIONS]
    params = SamplingParams(max_tokens=16, temperature=0.8, top_p=0.9)
    results: list = [None] * len(prompts)  # type: ignore[type-arg]
    barrier = threading.Barrier(len(prompts))

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = run(engine, prompts[i], params)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for tokens, text, fin in results:
        ended = 1 if fin.reason == "stop" and len(tokens) < 16 else 0  # the unstreamed EOS
        assert fin.completion_tokens == len(tokens) + ended <= 16
        assert text == engine.tokenizer.decode(tokens, skip_special_tokens=True)


def test_usage_counts_every_sampled_token(engine) -> None:  # type: ignore[no-untyped-def]
    ids = prompt(engine, QUESTIONS[3])
    tokens, text, fin = run(engine, ids, SamplingParams(max_tokens=12, temperature=0))
    assert fin.prompt_tokens == len(ids)
    assert fin.completion_tokens == 12 == len(tokens)
    assert fin.reason == "length"
    assert text == engine.tokenizer.decode(tokens, skip_special_tokens=True)


def test_end_of_sequence_counts_and_stops(engine) -> None:  # type: ignore[no-untyped-def]
    ids = prompt(engine, QUESTIONS[0])
    tokens, _, fin = run(engine, ids, SamplingParams(max_tokens=200, temperature=0))
    assert fin.reason == "stop"
    # the end-of-sequence token is sampled and counted, but not streamed as a delta
    assert fin.completion_tokens == len(tokens) + 1


def test_stop_sequence_cuts_before_it(engine) -> None:  # type: ignore[no-untyped-def]
    ids = prompt(engine, QUESTIONS[0])
    _, full, _ = run(engine, ids, SamplingParams(max_tokens=24, temperature=0))
    assert "Paris" in full
    _, text, fin = run(engine, ids, SamplingParams(max_tokens=24, temperature=0, stop=("Paris",)))
    assert fin.reason == "stop"
    assert text == full[: full.index("Paris")]


def test_cancel_stops_decoding(engine) -> None:  # type: ignore[no-untyped-def]
    ids = prompt(engine, "Write a very long story about a dragon.")
    handle = engine.submit(ids, SamplingParams(max_tokens=400, temperature=0.7, seed=3))
    events = iter(handle)
    for _ in range(3):
        assert isinstance(next(events), TokenDelta)
    handle.cancel()
    rest = list(events)
    assert isinstance(rest[-1], Finished) and rest[-1].reason == "cancelled"
    wait_idle(engine)
    produced = handle.completion_tokens
    generated = engine.stats.tokens_generated
    assert produced < 10
    wait_idle(engine)
    assert engine.stats.tokens_generated == generated


def test_context_limit_clamps_completion(make_engine) -> None:  # type: ignore[no-untyped-def]
    from veil.engine import ContextLengthExceeded

    small = make_engine(context_length=40)
    try:
        ids = prompt(small, "Hi")
        assert len(ids) < 40
        _, _, fin = run(small, ids, SamplingParams(max_tokens=500, temperature=0))
        assert fin.prompt_tokens + fin.completion_tokens <= 40
        with pytest.raises(ContextLengthExceeded):
            small.submit(list(range(100, 140)), SamplingParams())
    finally:
        small.close()
    with pytest.raises(Exception, match="shut down"):
        small.submit(ids, SamplingParams())


def test_closed_engine_fails_waiting_requests(make_engine) -> None:  # type: ignore[no-untyped-def]
    eng = make_engine()
    handle = eng.submit(prompt(eng, "Count to one hundred."), SamplingParams(max_tokens=300))
    next(iter(handle))
    eng.close()
    last = list(handle)[-1]
    assert isinstance(last, Failed | Finished)
