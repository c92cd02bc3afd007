"""What the gateway calls for an `:mpc` model variant: chat messages in, text deltas out.

    parties = veil.client.mpc.mpc_parties([(relay, "node-a"), (relay, "node-b"), (relay, "node-c")])
    backend = MpcChatBackend.load(parties)  # ~20 s, once
    for delta in backend.stream(messages, SamplingParams(max_tokens=64)):
        ...  # MpcDelta(text, token_id); raises MpcError subclasses (PartyFailure, PartyBusy...)

`parties` is either a factory of fresh party specs per session (`veil.client.mpc.mpc_parties`:
one OHTTP client per node, through the relay) or a fixed list of `veil mpc party` control
addresses (plain TCP: loopback and tests only).

The backend holds only public things (tokenizer, embedding table, final norm, LM head); each
`stream` call opens its own session with fresh shares and closes it, wiping the parties' state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from veil.mpc.client import PartySpec, RemoteSession, generate
from veil.mpc.errors import MpcConfigError
from veil.mpc.runtime import MpcSettings
from veil.mpc.source import ModelSource, load_source

__all__ = ["MpcChatBackend", "MpcDelta", "Parties"]

# control addresses, or a factory of fresh specs per session (channels are owned by a session)
Parties = Sequence[str] | Callable[[], Sequence[PartySpec]]


@dataclass(frozen=True)
class MpcDelta:
    text: str  # text now safe to show (may be empty while a character or stop is pending)
    token_id: int  # stays on the client; never sent anywhere


class MpcChatBackend:
    """Chat completions through the layers secret-shared across three parties."""

    def __init__(
        self,
        source: ModelSource,
        parties: Parties,
        settings: MpcSettings | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        if source.tokenizer is None:
            raise MpcConfigError(f"model source {source.name} has no tokenizer")
        self.source = source
        self.parties = parties if callable(parties) else list(parties)
        self.settings = settings or MpcSettings()
        self.timeout_s = timeout_s

    @classmethod
    def load(cls, parties: Parties, model: str = "smollm2", **kw: Any) -> MpcChatBackend:
        return cls(load_source(model), parties, **kw)

    def session(self) -> RemoteSession:
        """A new session across the parties (fresh shares, fresh tokens); close it after."""
        specs = self.parties() if callable(self.parties) else self.parties
        return RemoteSession(specs, self.settings, self.source.weights_sha256, self.timeout_s)

    def stream(self, messages: list[Any], params: Any) -> Iterator[MpcDelta]:
        """Yield text deltas for `messages` (veil.engine ChatMessage) under `params`
        (veil.engine SamplingParams: max_tokens, temperature, top_p, stop, seed)."""
        import torch

        from veil.engine import Sampler, encode_chat
        from veil.engine.detokenize import IncrementalText

        ids = encode_chat(self.source.tokenizer, messages)
        sampler = Sampler(params)
        text = IncrementalText(self.source.tokenizer, tuple(params.stop))

        def pick(logits: np.ndarray) -> int:
            return sampler(torch.from_numpy(logits))

        with self.session() as session:
            for token in generate(
                session, self.source.head, ids, params.max_tokens, pick, self.source.eos_token_ids
            ):
                if token in self.source.eos_token_ids:
                    break
                delta = text.add(token)
                if delta:
                    yield MpcDelta(delta, token)
                if text.stopped:
                    return
        rest = text.flush()
        if rest:
            yield MpcDelta(rest, -1)
