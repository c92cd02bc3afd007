"""Verified sessions: descriptor via the relay, pinned keys, and a receipt on every answer.

A fake node (the real OHTTP gateway in front of a small app that signs receipts as the node
does) stands behind an in-process relay stand-in; tampering knobs make it sign wrongly.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.testclient import TestClient

from support.gateway import deep_json
from veil.attest.policy import Policy
from veil.client import NodeRejected, ReceiptRefused
from veil.client.errors import DescriptorUnavailable
from veil.client.receipts import ReceiptStore
from veil.client.session import connect
from veil.identity import (
    DESCRIPTOR_PATH,
    MEDIA_DESCRIPTOR,
    ModelEntry,
    NodeIdentity,
    Receipt,
    request_digest,
    sign_receipt,
)
from veil.node.descriptor import DescriptorIssuer
from veil.node.gateway import gateway_router
from veil.node.keys import NodeKeys
from veil.wire.http import REQUEST_DIGEST_EXTENSION

MODEL = "smollm2-135m-instruct"
WEIGHTS = bytes.fromhex("cd" * 32)
TOKENS = ["Paris", " is", " the", " capital", "."]
ANSWER = "".join(TOKENS)
RELAY = "http://relay.test"


class FakeNode:
    """A node whose inner app signs receipts; `tamper` picks how it cheats."""

    def __init__(self) -> None:
        self.identity = NodeIdentity.generate()
        self.keys = NodeKeys.generate()
        self.tamper: str | None = None
        self.ticket_id: bytes | None = None  # the ticket id the node's receipts name
        self.seen_digests: list[bytes] = []
        self.seen_headers: list[dict[str, str]] = []
        self.issuer = DescriptorIssuer(
            self.identity, self.keys, endpoint="n1", models=[ModelEntry(MODEL, WEIGHTS)]
        )
        self.app = self._app()
        self.client = TestClient(self.app)

    def _receipt(self, digest: bytes, text: str) -> dict[str, Any] | None:
        t = self.tamper
        if t == "missing":
            return None
        signer = NodeIdentity.generate() if t == "other_node" else self.identity
        if t == "other_request":
            digest = request_digest(b"another request")
        answer = ANSWER + " (not what was sent)" if t == "other_answer" else text
        weights = bytes(32) if t == "other_model" else WEIGHTS
        receipt = sign_receipt(
            signer, digest, answer, weights, 7, len(TOKENS), self.ticket_id
        ).to_json()
        if t and t.startswith("field:"):
            name = t.split(":", 1)[1]
            value = receipt[name]
            if isinstance(value, int):
                receipt[name] = value + 1
            elif name == "node":
                receipt[name] = NodeIdentity.generate().address
            else:  # 0x hex: flip the last nibble
                receipt[name] = value[:-1] + ("0" if value[-1] != "0" else "1")
        return receipt

    def _app(self) -> FastAPI:
        app = FastAPI()
        node = self

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            digest = request.scope["extensions"][REQUEST_DIGEST_EXTENSION]
            node.seen_digests.append(digest)
            node.seen_headers.append(dict(request.headers))
            body = await request.json()
            usage = {"prompt_tokens": 7, "completion_tokens": len(TOKENS), "total_tokens": 12}
            receipt = node._receipt(digest, ANSWER)
            if node.tamper in ("deep_array", "deep_object"):
                bomb = deep_json(node.tamper)
                if not body.get("stream"):
                    return Response(bomb, media_type="application/json")
                sse = [b"data: " + bomb + b"\n\n", b"data: [DONE]\n\n"]
                return StreamingResponse(iter(sse), media_type="text/event-stream")
            if not body.get("stream"):
                out: dict[str, Any] = {
                    "id": "c1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": MODEL,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": ANSWER},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
                if receipt is not None:
                    out["veil_receipt"] = receipt
                return JSONResponse(out)

            def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
                c = {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": MODEL,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    **extra,
                }
                return f"data: {json.dumps(c)}\n\n"

            async def events() -> Any:
                for token in TOKENS:
                    yield chunk({"content": token})
                extra = {"usage": usage}
                if receipt is not None:
                    extra["veil_receipt"] = receipt
                yield chunk({}, "stop", **extra)
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        @app.get(DESCRIPTOR_PATH)
        async def descriptor() -> Response:
            return Response(node.issuer.current().encode(), media_type=MEDIA_DESCRIPTOR)

        app.include_router(gateway_router(app, self.keys))
        return app

    def relay(self, request: httpx.Request) -> httpx.Response:
        """Plays the relay for node `n1`."""
        path = request.url.path
        if path == "/relay/n1/descriptor":
            answer = self.client.get(DESCRIPTOR_PATH)
        elif path == "/relay/n1/ohttp-keys":
            answer = self.client.get("/.well-known/ohttp-keys")
        elif path == "/relay/n1":
            answer = self.client.post(
                "/gateway",
                content=request.read(),
                headers={"content-type": request.headers["content-type"]},
            )
        else:
            return httpx.Response(404)
        media = answer.headers.get("content-type", "")
        return httpx.Response(
            answer.status_code, headers={"content-type": media}, content=answer.content
        )


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


def session_for(node: FakeNode, **kwargs: Any):  # type: ignore[no-untyped-def]
    return connect(RELAY, "n1", outer=httpx.MockTransport(node.relay), **kwargs)


def ask(client: openai.OpenAI, stream: bool) -> str:
    kwargs = {"model": MODEL, "messages": [{"role": "user", "content": "capital of France?"}]}
    if stream:
        return "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(stream=True, **kwargs)
            if c.choices
        )
    return client.chat.completions.create(**kwargs).choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_receipt_verifies_against_the_descriptor(node: FakeNode, stream: bool) -> None:
    session = session_for(node)
    assert session.address == node.identity.address
    assert session.attestation_kind == "dev" and not session.hardware_isolated
    assert "no hardware isolation" in session.describe()
    client = session.openai()
    assert ask(client, stream) == ANSWER
    [result] = session.receipts
    assert result.receipt.node == node.identity.address
    assert result.receipt.request_digest == node.seen_digests[-1]
    assert result.streamed is stream
    assert set(result.checks) >= {"signature", "signer", "request_digest", "answer_digest"}
    assert "model_hash" in result.checks and "usage" in result.checks


TAMPERS = [
    ("missing", "missing"),
    ("other_node", "signer"),
    ("other_request", "request_digest"),
    ("other_answer", "answer_digest"),
    ("other_model", "model_hash"),
    *[
        (f"field:{name}", "signature")
        for name in (
            "node",
            "request_digest",
            "answer_digest",
            "model_hash",
            "prompt_tokens",
            "completion_tokens",
            "timestamp",
            "ticket_id",
            "signature",
        )
    ],
]


@pytest.mark.parametrize(("tamper", "check"), TAMPERS, ids=[t for t, _ in TAMPERS])
def test_whole_answer_with_a_bad_receipt_is_never_returned(
    node: FakeNode, tamper: str, check: str
) -> None:
    session = session_for(node)
    client = session.openai()
    node.tamper = tamper
    with pytest.raises(ReceiptRefused) as info:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "capital of France?"}]
        )
    assert info.value.check == check
    assert session.receipts == []


@pytest.mark.parametrize(("tamper", "check"), TAMPERS, ids=[t for t, _ in TAMPERS])
def test_streamed_answer_with_a_bad_receipt_raises_before_done(
    node: FakeNode, tamper: str, check: str
) -> None:
    session = session_for(node)
    node.tamper = tamper
    received = bytearray()
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    url = "http://node.veil.invalid/v1/chat/completions"
    with (
        httpx.Client(transport=session.transport()) as http,
        pytest.raises(ReceiptRefused) as info,
        http.stream("POST", url, json=body) as r,
    ):
        for piece in r.iter_bytes():
            received += piece
    assert info.value.check == check
    assert b"[DONE]" not in received
    assert session.receipts == []


def test_streamed_sdk_iteration_raises_receipt_refused(node: FakeNode) -> None:
    session = session_for(node)
    node.tamper = "other_request"
    with pytest.raises(ReceiptRefused):
        ask(session.openai(), True)


def test_dev_node_refused_under_tee_and_nothing_is_sent(node: FakeNode) -> None:
    from veil.attest.policy import LocalReleases

    with pytest.raises(NodeRejected) as info:
        session_for(node, policy=Policy.for_mode("tee", releases=LocalReleases([])))
    assert info.value.check == "evidence_kind"
    assert node.seen_digests == []


def test_anonymous_mode_accepts_dev_with_the_warning(node: FakeNode, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING)
    session = session_for(node, mode="anonymous")
    assert any("no hardware isolation" in w for w in session.report.warnings)
    assert "no hardware isolation" in caplog.text


def test_model_not_in_descriptor_is_refused_before_sending(node: FakeNode) -> None:
    client = session_for(node).openai()
    with pytest.raises(NodeRejected) as info:
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    assert info.value.check == "model"
    assert node.seen_digests == []


def test_key_rotation_makes_the_session_verify_the_node_again(node: FakeNode) -> None:
    session = session_for(node)
    client = session.openai()
    first = session.report
    node.keys.rotate()
    node.keys.rotate()  # the pinned key opens nothing now; the new one is in a new descriptor
    assert ask(client, False) == ANSWER
    assert session.report is not first
    assert session.report.key_configs()[0] == node.keys.current.config
    assert session.receipts[-1].receipt.node == node.identity.address


def test_keys_of_another_node_are_refused_after_rotation(node: FakeNode) -> None:
    session = session_for(node)
    client = session.openai()
    node.identity = NodeIdentity.generate()  # same relay id, another node behind it
    node.issuer = DescriptorIssuer(
        node.identity, node.keys, endpoint="n1", models=[ModelEntry(MODEL, WEIGHTS)]
    )
    node.keys.rotate()
    node.keys.rotate()
    with pytest.raises(NodeRejected) as info:
        ask(client, False)
    assert info.value.check == "identity"


def test_unlisted_keys_are_refused(node: FakeNode) -> None:
    from veil.client import KeyConfigError

    session = session_for(node)
    with pytest.raises(KeyConfigError):
        session._key_check((NodeKeys.generate(key_id=99).current.config,))


def test_session_verifies_again_before_the_descriptor_expires(node: FakeNode) -> None:
    session = session_for(node)
    first = session.report
    assert first.descriptor is not None
    session.clock = lambda: first.descriptor.expires_at - 30  # type: ignore[union-attr]
    node.issuer._clock = session.clock  # the node re-issues at half life too
    ask(session.openai(), False)
    assert session.report is not first


def test_descriptor_fetch_failure_is_typed() -> None:
    with pytest.raises(DescriptorUnavailable):
        connect(RELAY, "n1", outer=httpx.MockTransport(lambda r: httpx.Response(502)))


def test_descriptor_is_reissued_when_keys_rotate(node: FakeNode) -> None:
    first = node.issuer.current()
    assert node.issuer.current() is first
    node.keys.rotate()
    second = node.issuer.current()
    assert second is not first
    assert second.descriptor.ohttp_keys == node.keys.encoded_configs()


def test_descriptor_is_reissued_before_expiry() -> None:
    clock = [1_000_000.0]
    identity, keys = NodeIdentity.generate(), NodeKeys.generate()
    issuer = DescriptorIssuer(
        identity,
        keys,
        endpoint="n1",
        models=[ModelEntry(MODEL, WEIGHTS)],
        lifetime_s=3600,
        clock=lambda: clock[0],
    )
    first = issuer.current()
    clock[0] += 1700
    assert issuer.current() is first
    clock[0] += 200  # past half its lifetime
    assert issuer.current().descriptor.issued_at == int(clock[0])


def test_gateway_overrides_a_client_supplied_digest_header(node: FakeNode) -> None:
    session = session_for(node)
    forged = "ab" * 32
    with httpx.Client(transport=session.transport()) as http:
        r = http.post(
            "http://node.veil.invalid/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-veil-request-digest": forged},  # sealed inside the request
        )
    assert r.status_code == 200
    assert node.seen_headers[-1]["x-veil-request-digest"] == node.seen_digests[-1].hex() != forged
    assert session.receipts[-1].receipt.request_digest == node.seen_digests[-1]


def test_receipts_are_stored_without_history(node: FakeNode, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with ReceiptStore.open(tmp_path / "r.sqlite") as store:
        session = session_for(node, store=store)
        ask(session.openai(), False)
        ask(session.openai(), True)
        stored = store.receipts()
        assert len(stored) == 2 and not any(s.has_history for s in stored)
        assert {s.receipt.node for s in stored} == {node.identity.address}
    raw = (tmp_path / "r.sqlite").read_bytes()
    assert b"capital of France" not in raw and ANSWER.encode() not in raw


def test_receipts_with_history_keep_prompt_and_answer_encrypted(node: FakeNode, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with ReceiptStore.open(tmp_path / "r.sqlite", passphrase="pw", scrypt_n=2**10) as store:
        session = session_for(node, store=store)
        ask(session.openai(), False)
        prompt, answer = store.history(session.receipts[0].receipt.request_digest)
        assert answer == ANSWER and "capital of France" in (prompt or "")
    assert b"capital of France" not in (tmp_path / "r.sqlite").read_bytes()


def test_receipt_json_round_trip_matches_what_was_checked(node: FakeNode) -> None:
    session = session_for(node)
    ask(session.openai(), False)
    receipt = session.receipts[0].receipt
    assert Receipt.from_json(receipt.to_json()) == receipt
    assert replace(receipt, timestamp=receipt.timestamp + 1) != receipt


async def test_async_session_checks_receipts(node: FakeNode) -> None:
    session = session_for(node)
    # the async transport reaches the relay stand-in through the same MockTransport
    client = session.async_openai()
    out = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "capital of France?"}]
    )
    assert out.choices[0].message.content == ANSWER
    node.tamper = "other_request"
    with pytest.raises(ReceiptRefused):
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        )
        async for _ in stream:
            pass
    assert len(session.receipts) == 1


def test_descriptor_is_reachable_through_the_gateway_too(node: FakeNode) -> None:
    session = session_for(node)
    with httpx.Client(transport=session.transport()) as http:
        r = http.get("http://node.veil.invalid" + DESCRIPTOR_PATH)
    assert r.status_code == 200
    assert r.content == node.issuer.current().encode()


def test_signing_a_receipt_does_not_block_the_loop_noticeably() -> None:
    import time

    identity = NodeIdentity.generate()
    text = "word " * 400
    sign_receipt(identity, bytes(32), text, WEIGHTS, 10, 400)
    started = time.perf_counter()
    for _ in range(50):
        sign_receipt(identity, bytes(32), text, WEIGHTS, 10, 400)
    per_receipt = (time.perf_counter() - started) / 50
    assert per_receipt < 0.01, f"{per_receipt * 1000:.2f} ms per receipt"  # about 0.5 ms here


def test_node_identity_keystore(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    import os

    from veil.node.descriptor import load_node_identity
    from veil.node.errors import NodeSetupError

    path = tmp_path / "node" / "identity.json"
    first = load_node_identity(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_node_identity(path).address == first.address
    os.chmod(path, 0o644)
    with pytest.raises(NodeSetupError):
        load_node_identity(path)
    caplog.set_level(logging.WARNING)
    assert load_node_identity(None).address != first.address
    assert "in memory only" in caplog.text


@pytest.mark.parametrize("stream", [False, True])
def test_receipt_must_name_the_ticket_the_request_carried(node: FakeNode, stream: bool) -> None:
    from veil.client.session import TICKET_ID_EXTENSION

    session = session_for(node)
    sent = b"\x07" * 32
    body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    url = "http://node.veil.invalid/v1/chat/completions"

    def send(http: httpx.Client) -> bytes:
        request = http.build_request("POST", url, json=body, extensions={TICKET_ID_EXTENSION: sent})
        response = http.send(request, stream=True)
        try:
            return b"".join(response.iter_bytes())
        finally:
            response.close()

    with httpx.Client(transport=session.transport()) as http:
        for named in (None, b"\x08" * 32):  # no ticket id in the receipt, or another one
            node.ticket_id = named
            with pytest.raises(ReceiptRefused) as info:
                send(http)
            assert info.value.check == "ticket_id"
        node.ticket_id = sent
        send(http)
    [result] = session.receipts
    assert result.receipt.ticket_id == sent and "ticket_id" in result.checks


def test_checker_keeps_only_the_latest_receipts(node: FakeNode) -> None:
    session = session_for(node)
    session.checker.max_kept = 2
    client = session.openai()
    for _ in range(3):
        ask(client, False)
    assert len(session.receipts) == 2
    assert session.receipts[-1].receipt.request_digest == node.seen_digests[-1]


@pytest.mark.parametrize("bomb", ["deep_array", "deep_object"])
def test_a_deeply_nested_answer_is_malformed_not_a_crash(node: FakeNode, bomb: str) -> None:
    """A node answering 100,000 levels of nesting, with the recursion limit the Ethereum
    libraries set: the C decoder would overflow the stack (a segfault); the checker refuses
    the answer as `malformed` before decoding it, and the session goes on."""
    session = session_for(node)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        node.tamper = bomb
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        url = "http://node.veil.invalid/v1/chat/completions"
        with httpx.Client(transport=session.transport()) as http:
            for stream in (False, True):
                with pytest.raises(ReceiptRefused) as info:
                    http.post(url, json={**body, "stream": stream}).read()
                assert info.value.check == "malformed"
                assert "nests deeper than" in str(info.value)
    finally:
        sys.setrecursionlimit(limit)
    node.tamper = None
    assert ask(session.openai(), True) == ANSWER
    assert len(session.receipts) == 1
