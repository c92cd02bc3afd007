"""Engine errors: what a caller can get wrong about a generation request, and what can fail."""

from veil.errors import VeilError

__all__ = [
    "ContextLengthExceeded",
    "EngineClosed",
    "EngineError",
    "EngineOverloaded",
    "InvalidGenerationRequest",
    "ModelLoadError",
    "UpstreamError",
    "UpstreamFailed",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class EngineError(VeilError):
    """Base of engine errors."""


class ModelLoadError(EngineError):
    """The model file or directory is missing or cannot be loaded."""


class InvalidGenerationRequest(EngineError):
    """A generation parameter is out of range; `param` names it (OpenAI error bodies use it)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthExceeded(InvalidGenerationRequest):
    """The prompt (plus the requested completion) does not fit the context window."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="messages")


class EngineOverloaded(EngineError):
    """The waiting queue is full; the caller should retry later."""


class EngineClosed(EngineError):
    """The engine was shut down."""


class UpstreamError(EngineError):
    """The upstream OpenAI-compatible server failed this request (`veil.engine.upstream`)."""


class UpstreamUnavailable(UpstreamError):
    """The upstream cannot be reached, or it closed the connection mid-answer."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect, or went silent mid-answer, within its deadline."""


class UpstreamFailed(UpstreamError):
    """The upstream answered with an error status or a malformed stream; `status` when HTTP."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
