"""The client's share of the model: embedding lookup, final norm and LM head, in plain numpy.

These run on the client so token ids, the prompt and the answer never reach a party.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ClientHead"]


@dataclass(frozen=True)
class ClientHead:
    """Public weights the client needs around the secret-shared layers."""

    embedding: np.ndarray  # [vocab, D] float32
    final_norm: np.ndarray  # [D] float32
    lm_head: np.ndarray  # [D, vocab] float32 (the embedding transposed when tied)
    rms_eps: float

    @classmethod
    def from_torch(cls, torch_model: Any) -> ClientHead:
        emb = torch_model.model.embed_tokens.weight.detach().float().numpy()
        head = torch_model.lm_head.weight.detach().float().numpy()
        return cls(
            embedding=np.ascontiguousarray(emb),
            final_norm=torch_model.model.norm.weight.detach().float().numpy().copy(),
            lm_head=np.ascontiguousarray(head.T),
            rms_eps=float(torch_model.config.rms_norm_eps),
        )

    @classmethod
    def random(cls, vocab: int, hidden: int, rms_eps: float = 1e-5, seed: int = 1) -> ClientHead:
        rng = np.random.default_rng(seed)
        emb = rng.standard_normal((vocab, hidden)).astype(np.float32)
        head = rng.standard_normal((hidden, vocab)).astype(np.float32)  # untied: varied tokens
        return cls(emb, np.ones(hidden, np.float32), head, rms_eps)

    @property
    def hidden_size(self) -> int:
        return int(self.embedding.shape[1])

    def embed(self, token_ids: list[int], length: int) -> np.ndarray:
        """Embeddings [length, D] of the tokens, zero-padded at the end."""
        out = np.zeros((length, self.hidden_size), np.float32)
        out[: len(token_ids)] = self.embedding[np.asarray(token_ids, dtype=np.int64)]
        return out

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """Next-token logits [vocab] from one last-layer hidden state [D]."""
        h = hidden.astype(np.float64)
        h = h / np.sqrt(np.mean(h * h) + self.rms_eps) * self.final_norm
        return (h.astype(np.float32) @ self.lm_head).astype(np.float32)
