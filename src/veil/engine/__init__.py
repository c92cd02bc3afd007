"""The inference engine: model loading, chat templating, sampling and continuous batching.

Importing this package imports torch and transformers.
"""

from veil.engine.backend import BACKEND_KINDS, WEIGHTS_SCOPES, Backend, EngineStats
from veil.engine.batching import Engine
from veil.engine.chat import ROLES, ChatMessage, encode_chat
from veil.engine.errors import (
    ContextLengthExceeded,
    EngineClosed,
    EngineError,
    EngineOverloaded,
    InvalidGenerationRequest,
    ModelLoadError,
)
from veil.engine.handle import Event, Failed, Finished, GenerationHandle, TokenDelta
from veil.engine.model import (
    PACKAGED_MODEL_ID,
    LoadedModel,
    ModelFiles,
    load_model,
    locate_model,
    packaged_model_path,
    weights_digest,
)
from veil.engine.sampling import Sampler, SamplingParams

__all__ = [
    "BACKEND_KINDS",
    "PACKAGED_MODEL_ID",
    "ROLES",
    "WEIGHTS_SCOPES",
    "Backend",
    "ChatMessage",
    "ContextLengthExceeded",
    "Engine",
    "EngineClosed",
    "EngineError",
    "EngineOverloaded",
    "EngineStats",
    "Event",
    "Failed",
    "Finished",
    "GenerationHandle",
    "InvalidGenerationRequest",
    "LoadedModel",
    "ModelFiles",
    "ModelLoadError",
    "Sampler",
    "SamplingParams",
    "TokenDelta",
    "encode_chat",
    "load_model",
    "locate_model",
    "packaged_model_path",
    "weights_digest",
]
