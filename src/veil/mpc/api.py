"""What the gateway calls for an `:mpc` model variant: chat messages in, text deltas out.

    backend = MpcChatBackend.load(parties=["n1:7001", "n2:7001", "n3:7001"])  # ~20 s, once
    for delta in backend.stream(messages, SamplingParams(max_tokens=64)):
        ...  # MpcDelta(text, token_id); raises MpcError subclasses (PartyFailure, PartyBusy...)

The backend holds only public things (tokenizer, embedding table, final norm, LM head); each
`stream` call opens its own session with fresh shares and closes it, wiping the parties' state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from veil.mpc.client import RemoteSession, generate
from veil.mpc.errors import MpcConfigError
from veil.mpc.runtime import MpcSettings
from veil.mpc.source import ModelSource, load_source

__all__ = ["MpcChatBackend", "MpcDelta"]


@dataclass(frozen=True)
class MpcDelta:
    text: str  # text now safe to show (may be empty while a character or stop is pending)
    token_id: int  # stays on the client; never sent anywhere


class MpcChatBackend:
    """Chat completions through the layers secret-shared across three parties."""

    def __init__(
        self,
        source: ModelSource,
        parties: Sequence[str],
        settings: MpcSettings | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        if source.tokenizer is None:
            raise MpcConfigError(f"model source {source.name} has no tokenizer")
        self.source = source
        self.parties = list(parties)
        self.settings = settings or MpcSettings()
        self.timeout_s = timeout_s

    @classmethod
    def load(cls, parties: Sequence[str], model: str = "smollm2", **kw: Any) -> MpcChatBackend:
        return cls(load_source(model), parties, **kw)

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

        with RemoteSession(
            self.parties, self.settings, self.source.weights_sha256, self.timeout_s
        ) as session:
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
