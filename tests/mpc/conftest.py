"""Fixtures: tiny-model parties as processes (the real protocol) and in-process services."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from veil.mpc.launch import PartyProcess, free_link_port, start_parties
from veil.mpc.runtime import MpcConfig
from veil.mpc.source import ModelSource, load_source

TINY = "tiny:0"


@pytest.fixture(scope="session")
def tiny() -> ModelSource:
    return load_source(TINY)


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[PartyProcess]]:
    """Three ABY3 party processes serving the tiny model on loopback."""
    procs = start_parties(TINY, MpcConfig(), tmp_path_factory.mktemp("parties"))
    yield procs
    for p in procs:
        p.stop()


def read_log(p: PartyProcess) -> str:
    return Path(p.log_path).read_text(errors="replace")


__all__ = ["TINY", "free_link_port", "read_log"]


def assert_greedy_agrees(
    tokens: list[int], src: ModelSource, prompt: list[int], tie: float = 0.05
) -> None:
    """Each MPC greedy token must be plaintext's argmax given the same prefix (teacher-forced),
    unless plaintext's top two logits are within `tie` of each other there (a near-tie that
    fixed-point error may flip; random tiny models have some).
    """
    from veil.mpc.client import prefill_prompt
    from veil.mpc.local import PlainSession

    session = PlainSession(src.shape, src.weights)
    logits = prefill_prompt(session, src.head, prompt)
    for i, tok in enumerate(tokens):
        best = int(logits.argmax())
        assert tok == best or logits[best] - logits[tok] < tie, (i, tok, best)
        logits = src.head.logits(session.step(src.head.embed([tok], 1)))


def process_gone(pid: int) -> bool:
    """True once no process has this pid (a killed session worker, say)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def party_idle(service: Any) -> bool:
    """A `PartyService` with no session, no worker holding one, and a ready worker for the
    next session (a killed worker's replacement takes a few seconds)."""
    workers = service.workers()
    return (
        not service.active_sessions()
        and all(w["session"] is None for w in workers)
        and any(w["ready"] for w in workers)
    )
