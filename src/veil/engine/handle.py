"""A submitted generation as the caller sees it: a stream of events, cancellable from any thread."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from veil.engine.errors import EngineError

__all__ = ["Event", "Failed", "Finished", "GenerationHandle", "TokenDelta"]

_ids = itertools.count(1)


@dataclass(frozen=True)
class TokenDelta:
    """One sampled token and the text it made safe to show (may be empty)."""

    token_id: int
    text: str


@dataclass(frozen=True)
class Finished:
    """Terminal: why it ended and the exact token usage."""

    reason: str  # "stop" (end of sequence or stop string), "length", or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    text: str = ""  # text released at the end (held-back tail), may be empty


@dataclass(frozen=True)
class Failed:
    """Terminal: the engine could not finish this request."""

    error: EngineError


Event = TokenDelta | Finished | Failed


class GenerationHandle:
    """Events flow in from the engine thread; a sync or an async consumer drains them."""

    def __init__(self, prompt_tokens: int) -> None:
        self.id = next(_ids)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0  # tokens sampled so far (updated by the engine thread)
        self._events: deque[Event] = deque()
        self._cond = threading.Condition()
        self._cancelled = threading.Event()
        self._done = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None

    # --- engine side -------------------------------------------------------------------------
    def push(self, event: Event) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()
            loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None:
            try:
                loop.call_soon_threadsafe(wakeup.set)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening
                self._cancelled.set()

    # --- consumer side -----------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop decoding this request at the next step (safe from any thread)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self) -> Iterator[Event]:
        while not self._done:
            with self._cond:
                while not self._events:
                    self._cond.wait()
                event = self._events.popleft()
            if not isinstance(event, TokenDelta):
                self._done = True
            yield event

    async def __aiter__(self) -> AsyncIterator[Event]:
        with self._cond:
            self._loop = asyncio.get_running_loop()
            self._wakeup = asyncio.Event()
        wakeup = self._wakeup
        try:
            while not self._done:
                with self._cond:
                    event = self._events.popleft() if self._events else None
                    if event is None:
                        wakeup.clear()
                if event is None:
                    await wakeup.wait()
                    continue
                if not isinstance(event, TokenDelta):
                    self._done = True
                yield event
        finally:
            if not self._done:  # the consumer went away (disconnect, task cancelled)
                self.cancel()
