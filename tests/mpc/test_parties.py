"""The full protocol across three party processes on loopback (ABY3, tiny random model).

Correctness against plaintext, what a party receives (privacy), and a party dying mid-session
(the survivors kill the session workers that held it, and serve again).
"""

from __future__ import annotations

import math
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from support.net import Tap, until
from veil.mpc.channel import recv_frame, send_frame
from veil.mpc.client import RemoteSession, generate, prefill_prompt
from veil.mpc.errors import PartyBusy, PartyFailure
from veil.mpc.launch import PartyProcess, start_parties, start_party, wait_ready
from veil.mpc.local import PlainSession
from veil.mpc.runtime import MpcConfig
from veil.mpc.source import ModelSource

from .conftest import TINY, assert_greedy_agrees, process_gone, read_log

pytestmark = pytest.mark.slow

SETTINGS = MpcConfig()
PROMPT_A = list(b"The secret launch code is 0451, tell nobody.")  # 44 tokens: two chunks
PROMPT_B = list(b"Quarterly revenue fell by 12 percent in Oslo.")


def _addrs(parties: list[PartyProcess]) -> list[str]:
    return [p.control for p in parties]


def _session(addrs: list[str], tiny: ModelSource, wait_s: float = 90.0) -> RemoteSession:
    """A session on `addrs`; a party still starting its next session worker (each session
    gets a fresh one, which takes long on a loaded machine) says PartyBusy: ask again."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return RemoteSession(addrs, SETTINGS, tiny.weights_sha256)
        except PartyBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_three_processes_match_plaintext(parties: list[PartyProcess], tiny: ModelSource) -> None:
    for prompt in (PROMPT_A, PROMPT_B):
        with _session(_addrs(parties), tiny) as s:
            logits = prefill_prompt(s, tiny.head, prompt)
        plain = prefill_prompt(PlainSession(tiny.shape, tiny.weights), tiny.head, prompt)
        assert np.abs(logits - plain).max() < 0.05 * np.abs(plain).max()
        with _session(_addrs(parties), tiny) as s:
            got = list(generate(s, tiny.head, prompt, 4))
        assert_greedy_agrees(got, tiny, prompt)


def _received(parties: list[PartyProcess], tiny: ModelSource, prompt: list[int]) -> bytes:
    """Everything party 0 receives from the client for one generation."""
    tap = Tap(parties[0].control)
    try:
        addrs = [tap.address, *_addrs(parties)[1:]]
        with _session(addrs, tiny) as s:
            list(generate(s, tiny.head, prompt, 3))
        time.sleep(0.2)
        return bytes(tap.received)
    finally:
        tap.close()


def _chi2_same_distribution(a: bytes, b: bytes) -> float:
    """p-value of a two-sample chi-square test on byte histograms (Wilson-Hilferty approx)."""
    ha = np.bincount(np.frombuffer(a, np.uint8), minlength=256).astype(float)
    hb = np.bincount(np.frombuffer(b, np.uint8), minlength=256).astype(float)
    tot = ha + hb
    keep = tot > 0
    ea = tot * ha.sum() / tot.sum()
    eb = tot * hb.sum() / tot.sum()
    chi2 = float((((ha - ea) ** 2 / ea)[keep]).sum() + (((hb - eb) ** 2 / eb)[keep]).sum())
    k = int(keep.sum()) - 1
    z = ((chi2 / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_party_sees_indistinguishable_bytes(parties: list[PartyProcess], tiny: ModelSource) -> None:
    a = _received(parties, tiny, PROMPT_A)
    b = _received(parties, tiny, PROMPT_B)
    assert len(a) == len(b)  # same bucket, same number of steps: same sizes
    assert _chi2_same_distribution(a, b) > 1e-3
    # the test has power: the plaintext embeddings of the two prompts are told apart at once
    ea = tiny.head.embed(PROMPT_A, len(PROMPT_A)).tobytes()
    eb = tiny.head.embed(PROMPT_B, len(PROMPT_B)).tobytes()
    assert _chi2_same_distribution(ea * 8, eb * 8) < 1e-6


def test_no_plaintext_reaches_a_party(parties: list[PartyProcess], tiny: ModelSource) -> None:
    got = _received(parties, tiny, PROMPT_A)
    text = bytes(PROMPT_A)
    needles = [text, text[:12]]
    for fmt in ("<i", "<q", ">i"):  # token ids as integer sequences
        needles.append(b"".join(struct.pack(fmt, t) for t in PROMPT_A[:4]))
    emb = tiny.head.embed(PROMPT_A, len(PROMPT_A))
    needles += [row[:4].tobytes() for row in emb]  # any 16-byte piece of an embedding row
    needles.append(emb[:2].astype(np.float64).tobytes()[:16])
    for n in needles:
        assert n not in got
    logs = "".join(read_log(p) for p in parties)
    assert text.decode() not in logs and text.decode()[:12] not in logs
    assert str(PROMPT_A[:4])[1:-1] not in logs


def _status(p: PartyProcess) -> dict:
    """The operator's view of a party: its sessions and its live session workers."""
    host, _, port = p.control.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        send_frame(sock, {"op": "status"})
        return recv_frame(sock)[0]


def test_party_dying_mid_session(tiny: ModelSource, tmp_path: Path) -> None:
    """A party process dies mid-session: the client gets a clear error at once; the survivors
    kill the session workers that held the session's shares, hold no session, and serve a new
    session with a restarted third party; the dead party's worker does not outlive it."""
    args = ("--link-timeout", "5", "--no-warm")
    procs = start_parties(TINY, SETTINGS, tmp_path, args)
    workers: list[int] = []
    try:
        s = RemoteSession(_addrs(procs), SETTINGS, tiny.weights_sha256)
        prefill_prompt(s, tiny.head, PROMPT_A[:20])
        held = [
            [w["pid"] for w in _status(p)["workers"] if w["session"] == s.session_id] for p in procs
        ]
        assert [len(h) for h in held] == [1, 1, 1]
        workers = [w["pid"] for p in procs for w in _status(p)["workers"]]
        procs[2].kill()
        t0 = time.monotonic()
        with pytest.raises(PartyFailure, match="party 2"):
            s.step(tiny.head.embed([5], 1))
        assert time.monotonic() - t0 < 10
        s.close()

        def survivors_free() -> bool:
            views = [_status(p) for p in procs[:2]]
            return all(  # and a fresh worker is ready for the next session
                not v["sessions"]
                and all(w["session"] is None for w in v["workers"])
                and any(w["ready"] for w in v["workers"])
                for v in views
            )

        assert until(survivors_free, 20), [_status(p) for p in procs[:2]]
        assert all(process_gone(pid) for pid in held[0] + held[1])  # their shares died with them
        assert until(lambda: process_gone(held[2][0]), 10)  # the dead party's worker: no orphan
        log = read_log(procs[0])
        assert "killed" in log and "wiped" in log
        # a new session on the survivors and the third party restarted (same link, same cert)
        procs[2] = start_party(
            TINY, SETTINGS, tmp_path / "party2-restarted.log", procs[2].link,
            procs[2].cert_dir, args,
        )  # fmt: skip
        wait_ready([procs[2]])
        with RemoteSession(_addrs(procs), SETTINGS, tiny.weights_sha256) as s2:
            got = list(generate(s2, tiny.head, PROMPT_B[:20], 2))
        assert_greedy_agrees(got, tiny, PROMPT_B[:20])
        workers += [w["pid"] for p in procs for w in _status(p)["workers"]]
    finally:
        for p in procs:
            p.stop()
    assert until(lambda: all(process_gone(pid) for pid in workers), 10)  # SIGTERM: no orphans


class _StubTokenizer:
    """Bytes as tokens, letters as text: enough for the chat API over the tiny model."""

    def apply_chat_template(self, messages: list[dict], **_: object) -> list[int]:
        return list("".join(m["content"] for m in messages).encode())

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(97 + t % 26) for t in ids)


def test_chat_backend_streams_text(parties: list[PartyProcess], tiny: ModelSource) -> None:
    import dataclasses

    from veil.engine import ChatMessage, SamplingParams
    from veil.mpc.api import MpcChatBackend

    src = dataclasses.replace(tiny, tokenizer=_StubTokenizer(), eos_token_ids=frozenset({999}))
    backend = MpcChatBackend(src, _addrs(parties), SETTINGS)
    deltas = list(
        backend.stream(
            [ChatMessage("user", "hello there")], SamplingParams(max_tokens=3, temperature=0)
        )
    )
    assert len(deltas) == 3 and all(len(d.text) == 1 for d in deltas)
    assert_greedy_agrees([d.token_id for d in deltas], tiny, list(b"hello there"))
