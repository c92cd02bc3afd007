"""What the gateway calls for an `:mpc` model variant: chat messages in, text deltas out.

    parties = veil.client.mpc.mpc_parties([(relay, "node-a"), (relay, "node-b"), (relay, "node-c")])
    backend = MpcChatBackend.load(parties)  # ~20 s, once
    for delta in backend.stream(messages, SamplingParams(max_tokens=64)):
        ...  # MpcDelta(text, token_id); raises MpcError subclasses (PartyFailure, PartyBusy...)

    chat = backend.start([("user", "hi")], max_tokens=8, temperature=0.0)  # checks the request
    for delta in chat: ...                     # opens the session, prefill, one step per token
    chat.prompt_tokens, chat.completion_tokens, chat.finish_reason   # "stop" | "length"

`parties` is either a factory of fresh party specs per session (`veil.client.mpc.mpc_parties`:
one OHTTP client per node, through the relay) or a fixed list of `veil mpc party` control
addresses (plain TCP: loopback and tests only).

The backend holds only public things (tokenizer, embedding table, final norm, LM head); each
answer opens its own session with fresh shares and closes it, wiping the parties' state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from veil.mpc.client import PartySpec, RemoteSession, generate
from veil.mpc.errors import InvalidRequest, MpcConfigError
from veil.mpc.runtime import MpcConfig
from veil.mpc.source import ModelSource, load_source

__all__ = ["MpcChat", "MpcChatBackend", "MpcDelta", "Parties"]

# control addresses, or a factory of fresh specs per session (channels are owned by a session)
Parties = Sequence[str] | Callable[[], Sequence[PartySpec]]


@dataclass(frozen=True)
class MpcDelta:
    text: str  # text now safe to show (may be empty while a character or stop is pending)
    token_id: int  # stays on the client; never sent anywhere


class MpcChat:
    """One answer: iterate it for its text deltas (each `next` may block for seconds: keep it
    off an event loop). The session opens at the first `next` and closes when the answer ends,
    fails, is `cancel`led or the iterator is closed."""

    def __init__(self, backend: MpcChatBackend, ids: list[int], params: Any) -> None:
        self.backend = backend
        self.params = params
        self.prompt_tokens = len(ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None  # "stop", "length" or "cancelled" once ended
        self._ids = ids
        self._cancel = threading.Event()
        self._run = self._generate()

    def __iter__(self) -> Iterator[MpcDelta]:
        return self._run

    def __next__(self) -> MpcDelta:
        return next(self._run)

    def cancel(self) -> None:
        """Stop after the token in progress (thread-safe); the session is closed then."""
        self._cancel.set()

    def close(self) -> None:
        """End the answer now and close its session (not while another thread runs `next`)."""
        self._run.close()

    def _generate(self) -> Generator[MpcDelta, None, None]:
        import torch

        from veil.engine import Sampler
        from veil.engine.detokenize import IncrementalText

        source = self.backend.source
        sampler = Sampler(self.params)
        text = IncrementalText(source.tokenizer, tuple(self.params.stop))

        def pick(logits: np.ndarray) -> int:
            return sampler(torch.from_numpy(logits))

        with self.backend.session() as session:
            tokens = generate(
                session,
                source.head,
                self._ids,
                self.params.max_tokens,
                pick,
                source.eos_token_ids,
            )
            for token in tokens:
                if token in source.eos_token_ids:
                    self.finish_reason = "stop"
                    break
                self.completion_tokens += 1
                delta = text.add(token)
                if delta:
                    yield MpcDelta(delta, token)
                if text.stopped:
                    self.finish_reason = "stop"
                    return
                if self._cancel.is_set():
                    self.finish_reason = "cancelled"
                    return
        rest = text.flush()
        if rest:
            yield MpcDelta(rest, -1)
        if self.finish_reason is None:
            self.finish_reason = "length"


class MpcChatBackend:
    """Chat completions through the layers secret-shared across three parties."""

    def __init__(
        self,
        source: ModelSource,
        parties: Parties,
        settings: MpcConfig | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        if source.tokenizer is None:
            raise MpcConfigError(f"model source {source.name} has no tokenizer")
        self.source = source
        self.parties = parties if callable(parties) else list(parties)
        self.settings = settings or MpcConfig()
        self.timeout_s = timeout_s

    @classmethod
    def load(cls, parties: Parties, model: str = "smollm2", **kw: Any) -> MpcChatBackend:
        return cls(load_source(model), parties, **kw)

    def session(self) -> RemoteSession:
        """A new session across the parties (fresh shares, fresh tokens); close it after."""
        specs = self.parties() if callable(self.parties) else self.parties
        return RemoteSession(specs, self.settings, self.source.weights_sha256, self.timeout_s)

    def start(
        self,
        messages: Sequence[Any],
        *,
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> MpcChat:
        """Check the request and encode the prompt (nothing is sent yet): `messages` are
        (role, content) pairs or `veil.engine.ChatMessage`s. `InvalidRequest` (with `param`)
        for a role, a sampling value or an empty conversation the model cannot take."""
        from veil.engine import ChatMessage, InvalidGenerationRequest, SamplingParams, encode_chat

        try:
            params = SamplingParams(
                max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=tuple(stop),
                seed=seed,
            )  # fmt: skip
            chat = [m if isinstance(m, ChatMessage) else ChatMessage(*m) for m in messages]
            ids = encode_chat(self.source.tokenizer, chat)
        except InvalidGenerationRequest as exc:
            raise InvalidRequest(str(exc), exc.param) from None
        return MpcChat(self, ids, params)

    def stream(self, messages: list[Any], params: Any) -> Iterator[MpcDelta]:
        """Yield text deltas for `messages` (veil.engine ChatMessage) under `params`
        (veil.engine SamplingParams: max_tokens, temperature, top_p, stop, seed)."""
        from veil.engine import encode_chat

        yield from MpcChat(self, encode_chat(self.source.tokenizer, messages), params)
