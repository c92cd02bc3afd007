"""Where the layers' public weights come from: the packaged SmolLM2 model, or a tiny random one.

Parties and the client load the same source and compare its digest before a session starts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from veil.mpc.errors import MpcConfigError
from veil.mpc.head import ClientHead
from veil.mpc.model import (
    LayerWeights,
    LlamaShape,
    calibrate_norm_scales,
    extract_weights,
    random_weights,
)

__all__ = [
    "TINY_SHAPE",
    "TINY_VOCAB",
    "ModelSource",
    "load_source",
    "source_for_model",
    "source_from_loaded",
]

# 2 layers, hidden 64, GQA 4 query heads over 2 KV heads: the CI configuration
TINY_SHAPE = LlamaShape(2, 64, 4, 2, 16, 128, 1e-5, 10000.0)
TINY_VOCAB = 256
# public text whose activations set the norm scales (see calibrate_norm_scales)
CALIBRATION_TEXT = (
    "Explain, step by step and with examples, how photosynthesis turns sunlight, water and "
    "carbon dioxide into sugar, and why it matters for life on Earth."
)


@dataclass
class ModelSource:
    """Everything public about a model, split between parties (layers) and client (head)."""

    name: str  # "smollm2" or "tiny:<seed>"
    shape: LlamaShape
    weights: LayerWeights
    head: ClientHead
    weights_sha256: str  # what parties and client compare before a session
    tokenizer: Any = None  # None for the tiny model (token ids are used directly)
    eos_token_ids: frozenset[int] = frozenset()
    torch_model: Any = None  # kept for plaintext comparisons; None for tiny


def _digest(weights: LayerWeights) -> str:
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(np.ascontiguousarray(weights[name]).tobytes())
    return h.hexdigest()


def load_source(name: str = "smollm2") -> ModelSource:
    """Load a model source by name: `smollm2` (packaged, about 20 s) or `tiny:<seed>`."""
    if name.startswith("tiny"):
        seed = int(name.partition(":")[2] or 0)
        weights = random_weights(TINY_SHAPE, seed)
        head = ClientHead.random(TINY_VOCAB, TINY_SHAPE.hidden_size, seed=seed + 1)
        return ModelSource(name, TINY_SHAPE, weights, head, _digest(weights))
    if name == "smollm2":
        from veil.engine import load_model

        return source_from_loaded(load_model(), name)
    raise MpcConfigError(f"unknown model source {name!r}: smollm2 or tiny:<seed>")


def source_for_model(model_id: str) -> ModelSource:
    """The source whose layers parties serve for the model a client asks for by its API id:
    the packaged model's id (`smollm2-135m-instruct`) or a source name (`tiny:<seed>`)."""
    from veil.engine.model import PACKAGED_MODEL_ID

    if model_id == PACKAGED_MODEL_ID:
        return load_source("smollm2")
    if model_id.startswith("tiny:") or model_id == "smollm2":
        return load_source(model_id)
    raise MpcConfigError(f"no MPC model source is known for {model_id!r}")


def source_from_loaded(lm: Any, name: str = "smollm2") -> ModelSource:
    """The source of a model `veil.engine.load_model` already loaded (a node's own model)."""
    from veil.engine import ChatMessage, encode_chat

    shape, weights = extract_weights(lm.model)
    head = ClientHead.from_torch(lm.model)
    ids = encode_chat(lm.tokenizer, [ChatMessage("user", CALIBRATION_TEXT)])
    shape = calibrate_norm_scales(shape, weights, head.embed(ids, len(ids)))
    return ModelSource(
        name,
        shape,
        weights,
        head,
        lm.weights_sha256,
        tokenizer=lm.tokenizer,
        eos_token_ids=lm.eos_token_ids,
        torch_model=lm.model,
    )
