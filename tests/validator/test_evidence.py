"""Evidence bundles: canonical bytes and hash, bounded typed parsing, and a recheck from the
bundle alone that passes an honest answer and fails a cheat's."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random

import pytest

from veil.engine import ChatMessage, Finished, SamplingParams, TokenDelta
from veil.identity import NodeIdentity, sign_receipt
from veil.validator import Answer, ChatRequest, Report, ValidatorError
from veil.validator.evidence import (
    MAX_BUNDLE_BYTES,
    EvidenceBundle,
    EvidenceMalformed,
    check_with_receipt,
    parse_bundle,
    recheck,
)

MODEL = hashlib.sha256(b"approved weights").digest()
TICKET = hashlib.sha256(b"ticket").digest()


@pytest.fixture(scope="module")
def node() -> NodeIdentity:
    return NodeIdentity.generate()


def _bundle(node: NodeIdentity, model_hash: bytes = MODEL) -> EvidenceBundle:
    req = ChatRequest(
        messages=(ChatMessage("user", "Say hé 🙂"),), max_tokens=8, temperature=0, seed=3
    )
    ans = Answer((10, 20, 30), "hé 🙂", "stop", 4)
    receipt = sign_receipt(node, bytes(32), ans.text, model_hash, 9, 4, TICKET)
    report = Report()
    report.add("greedy", False, "3 misses of 3")
    return EvidenceBundle(node.address, model_hash, TICKET, req, ans, 9, receipt, report)


def test_round_trip_and_hash_stability(node: NodeIdentity) -> None:
    bundle = _bundle(node)
    data = bundle.encode()
    assert (
        data
        == json.dumps(
            json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    )
    again = parse_bundle(data)
    assert again.encode() == data
    assert again.evidence_hash() == bundle.evidence_hash() == hashlib.sha256(data).digest()
    assert len(bundle.evidence_hash()) == 32
    assert again.request == dataclasses.replace(bundle.request, temperature=0.0)
    assert again.answer == bundle.answer and again.receipt == bundle.receipt
    assert again.report.as_dict() == bundle.report.as_dict()
    # any change is another hash
    changed = dataclasses.replace(bundle, answer=dataclasses.replace(bundle.answer, text="x"))
    assert changed.evidence_hash() != bundle.evidence_hash()


def _mutate(node: NodeIdentity, edit) -> bytes:  # type: ignore[no-untyped-def]
    obj = _bundle(node).to_json()
    edit(obj)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    "edit",
    [
        lambda o: o.pop("receipt"),
        lambda o: o.update(version=2),
        lambda o: o["receipt"].update(signature="0x12"),
        lambda o: o["request"].update(messages=[]),
        lambda o: o["request"].update(messages=[{"role": "root", "content": "hi"}]),
        lambda o: o["request"].update(max_tokens="8"),
        lambda o: o["request"].update(temperature=True),
        lambda o: o["answer"].update(token_ids=[1, "2"]),
        lambda o: o["answer"]["usage"].pop("completion_tokens"),
        lambda o: o.update(model_hash="0x1234"),
        lambda o: o["report"]["steps"].append({"name": "x", "ok": "yes", "reason": ""}),
    ],
)
def test_malformed_bundles_are_typed_errors(node: NodeIdentity, edit) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EvidenceMalformed):
        parse_bundle(_mutate(node, edit))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b"\xff\xfe",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"answer": {"text": "' + b"a" * MAX_BUNDLE_BYTES + b'"}}',
    ],
)
def test_garbage_oversized_and_deep_bundles_are_typed_errors(data: bytes) -> None:
    with pytest.raises(EvidenceMalformed):
        parse_bundle(data)
    assert issubclass(EvidenceMalformed, ValidatorError)


# ---- recheck on real answers (the reference model, loaded once per session) ----


def _answer(engine, req: ChatRequest) -> Answer:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_tokens=req.max_tokens, temperature=req.temperature, seed=req.seed)
    ids: list[int] = []
    text = ""
    for ev in engine.submit(engine.encode_chat(list(req.messages)), params):
        if isinstance(ev, TokenDelta):
            ids.append(ev.token_id)
            text += ev.text
        elif isinstance(ev, Finished):
            return Answer(tuple(ids), text + ev.text, ev.reason, ev.completion_tokens)
    raise AssertionError("generation failed")


def _signed_bundle(loaded, node: NodeIdentity, req: ChatRequest, ans: Answer) -> EvidenceBundle:  # type: ignore[no-untyped-def]
    from veil.engine import encode_chat

    prompt_tokens = len(encode_chat(loaded.tokenizer, list(req.messages)))
    receipt = sign_receipt(
        node,
        bytes(32),
        ans.text,
        loaded.weights_sha256,
        prompt_tokens,
        ans.completion_tokens,
        TICKET,
    )
    model_hash = bytes.fromhex(loaded.weights_sha256)
    return EvidenceBundle(node.address, model_hash, TICKET, req, ans, prompt_tokens, receipt)


@pytest.mark.slow
def test_recheck_passes_honest_and_fails_cheat(loaded_model, builtin_engine, node) -> None:  # type: ignore[no-untyped-def]
    req = ChatRequest((ChatMessage("user", "What is the capital of France?"),), 24, 0.0)
    honest = _signed_bundle(loaded_model, node, req, _answer(builtin_engine, req))
    first = check_with_receipt(
        loaded_model, req, honest.answer, honest.receipt, node=node.address, payment_id=TICKET
    )
    assert first.passed, first.as_dict()
    mine = recheck(parse_bundle(dataclasses.replace(honest, report=first).encode()), loaded_model)
    assert mine.passed and mine.as_dict() == first.as_dict()

    rng = random.Random(1)
    ids = tuple(rng.randrange(1000, 40000) for _ in range(24))
    text = loaded_model.tokenizer.decode(list(ids), skip_special_tokens=True)
    made_up = _signed_bundle(loaded_model, node, req, Answer(ids, text, "length", 24))
    cheat_report = recheck(parse_bundle(made_up.encode()), loaded_model)
    assert cheat_report.failed() == ["greedy"], cheat_report.as_dict()

    other_ticket = dataclasses.replace(honest, payment_id=hashlib.sha256(b"paid").digest())
    assert recheck(other_ticket, loaded_model).failed() == ["payment"]
    with pytest.raises(ValidatorError):
        recheck(dataclasses.replace(honest, model_hash=MODEL), loaded_model)
    # a request the reference cannot read is a failed step, not a crash
    odd = dataclasses.replace(req, messages=(ChatMessage("root", "hi"),))
    assert recheck(dataclasses.replace(honest, request=odd), loaded_model).failed() == ["request"]
