"""The seam between the node and an inference engine: what any backend must offer.

A backend takes a chat request (the messages plus their prompt token ids, counted with the
model's own tokenizer so the node can check the context window and the price before anything
runs) and answers with a `GenerationHandle` whose events are the streamed tokens. Three kinds:

* `builtin` (`veil.engine.batching.Engine`): fp32 transformers with continuous batching, the
  reference the others are checked against;
* `ctranslate2` (`veil.engine.ct2.Ct2Engine`): the packaged weights converted once to
  CTranslate2 int8, the fast CPU default;
* `upstream` (`veil.engine.upstream.UpstreamEngine`): any OpenAI-compatible server by URL.

Every backend keeps the same promises: token counts are what was streamed, stop strings cut
before they show, `max_tokens` and the context window hold, cancelling stops the work, and no
prompt or answer text is logged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from veil.engine.chat import ChatMessage, encode_chat
from veil.engine.errors import ContextLengthExceeded
from veil.engine.handle import GenerationHandle
from veil.engine.model import ModelFiles
from veil.engine.sampling import SamplingParams

__all__ = [
    "BACKEND_KINDS",
    "WEIGHTS_SCOPES",
    "Backend",
    "EngineStats",
    "LocalBackend",
    "LocalWeights",
    "check_prompt_fits",
]

BACKEND_KINDS = ("builtin", "ctranslate2", "upstream")

# What a backend's weights hash covers (stated in the node's descriptor):
#   "loaded": the exact file(s) this process loads and runs;
#   "converted": the file(s) this process converted (deterministically) into what it runs;
#   "declared": file(s) the operator names; another process runs the model, unchecked.
WEIGHTS_SCOPES = ("loaded", "converted", "declared")


@dataclass
class EngineStats:
    """Counters for health checks, tests and benchmarks (never any text)."""

    requests: int = 0
    prefills: int = 0
    decode_steps: int = 0
    tokens_generated: int = 0
    max_batch_seen: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)  # batch size -> decode steps


class Backend(ABC):
    """One inference engine behind a node; `submit_chat` is thread-safe."""

    kind: ClassVar[str]  # one of BACKEND_KINDS
    weights_scope: ClassVar[str]  # one of WEIGHTS_SCOPES
    stats: EngineStats

    @property
    @abstractmethod
    def model_id(self) -> str:
        """The name clients ask for."""

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Prompt plus completion tokens per request, at most."""

    @property
    @abstractmethod
    def weights_sha256(self) -> str:
        """Hex sha256 of the weights (`veil.engine.model.weights_digest`); see `weights_scope`."""

    @property
    @abstractmethod
    def weights_source(self) -> str:
        """The file or directory the hash was taken of, for operators' eyes (never signed)."""

    @abstractmethod
    def encode_chat(self, messages: list[ChatMessage]) -> list[int]:
        """The prompt token ids the model's chat template makes of `messages`."""

    @abstractmethod
    def submit_chat(
        self, messages: list[ChatMessage], prompt_ids: list[int], params: SamplingParams
    ) -> GenerationHandle:
        """Start a generation (`prompt_ids` from `encode_chat(messages)`); raises at once
        (`ContextLengthExceeded`, `EngineOverloaded`, `EngineClosed`) when it cannot be served."""

    @property
    @abstractmethod
    def idle(self) -> bool:
        """No request is running or waiting."""

    @abstractmethod
    def close(self, timeout: float = 10.0) -> None:
        """Stop; requests still running end with `Failed(EngineClosed)`."""


class LocalWeights(Protocol):
    """What an in-process backend runs: a model's files, their hash and its tokenizer
    (`veil.engine.model.LoadedModel`, `veil.engine.ct2.Ct2Model`)."""

    @property
    def model_id(self) -> str: ...
    @property
    def context_length(self) -> int: ...
    @property
    def weights_sha256(self) -> str: ...
    @property
    def files(self) -> ModelFiles: ...
    @property
    def tokenizer(self) -> Any: ...


class LocalBackend(Backend):
    """A backend that runs `local` in this process: it tokenizes with the model's own
    tokenizer and states the hash of the files it loaded (or converted)."""

    local: LocalWeights
    _context_length: int

    @property
    def model_id(self) -> str:
        return self.local.model_id

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def weights_sha256(self) -> str:
        return self.local.weights_sha256

    @property
    def weights_source(self) -> str:
        return ", ".join(str(p) for p in self.local.files.weight_files)

    @property
    def tokenizer(self) -> Any:
        return self.local.tokenizer

    def encode_chat(self, messages: list[ChatMessage]) -> list[int]:
        return encode_chat(self.local.tokenizer, messages)

    def submit_chat(
        self, messages: list[ChatMessage], prompt_ids: list[int], params: SamplingParams
    ) -> GenerationHandle:
        return self.submit(prompt_ids, params)

    @abstractmethod
    def submit(self, prompt_ids: list[int], params: SamplingParams) -> GenerationHandle:
        """Queue a generation of `prompt_ids`; raises at once if it cannot be served."""


def check_prompt_fits(n: int, context_length: int) -> None:
    """A prompt of `n` tokens must leave room for at least one completion token."""
    if n == 0:
        raise ContextLengthExceeded("the prompt is empty")
    if n >= context_length:
        raise ContextLengthExceeded(
            f"the prompt has {n} tokens; this node's context window is "
            f"{context_length} tokens and must leave room for at least one more"
        )
