"""The inference engine: model loading, chat templating, sampling and continuous batching.

Importing this package imports torch and transformers.
"""

from veil.engine.batching import Engine, EngineStats
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
    "PACKAGED_MODEL_ID",
    "ROLES",
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
