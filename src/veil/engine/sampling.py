"""Sampling parameters and the per-token choice (greedy, temperature, nucleus)."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

import torch

from veil.engine.errors import InvalidGenerationRequest
from veil.wire.chat import MAX_STOP_CHARS, MAX_STOP_SEQUENCES, SEED_MAX

__all__ = ["Sampler", "SamplingParams"]


@dataclass(frozen=True)
class SamplingParams:
    """OpenAI-style sampling knobs, validated on construction."""

    max_tokens: int = 256  # completion tokens at most
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0  # nucleus mass kept, in (0, 1]
    stop: tuple[str, ...] = ()  # the text ends before the first of these
    seed: int | None = None  # fixes the sampled tokens; None draws a fresh seed
    ignore_eos: bool = False  # decode exactly max_tokens (benchmarks); not exposed over HTTP
    _resolved_seed: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidGenerationRequest("max_tokens must be a positive integer", "max_tokens")
        if not (isinstance(self.temperature, int | float) and math.isfinite(self.temperature)):
            raise InvalidGenerationRequest("temperature must be a finite number", "temperature")
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidGenerationRequest("temperature must be between 0 and 2", "temperature")
        if not (isinstance(self.top_p, int | float) and math.isfinite(self.top_p)):
            raise InvalidGenerationRequest("top_p must be a finite number", "top_p")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidGenerationRequest("top_p must be greater than 0 and at most 1", "top_p")
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise InvalidGenerationRequest(
                f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed", "stop"
            )
        for s in self.stop:
            if not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS:
                raise InvalidGenerationRequest(
                    f"each stop sequence must be a non-empty string of at most {MAX_STOP_CHARS} "
                    "characters",
                    "stop",
                )
        if self.seed is not None and (
            not isinstance(self.seed, int) or not -SEED_MAX <= self.seed <= SEED_MAX
        ):
            raise InvalidGenerationRequest("seed must be a 64-bit signed integer", "seed")
        resolved = secrets.randbits(63) if self.seed is None else self.seed % (SEED_MAX + 1)
        object.__setattr__(self, "_resolved_seed", resolved)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler:
    """Picks next tokens for one sequence; its own generator keeps batching from perturbing it."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._gen: torch.Generator | None = None
        if not params.greedy:
            self._gen = torch.Generator(device="cpu")
            self._gen.manual_seed(params._resolved_seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """Pick a token from a 1-D row of logits (float32)."""
        if self._gen is None:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits.float() / self.params.temperature, dim=-1)
        if self.params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            keep = (cumulative - sorted_probs) < self.params.top_p
            sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
            choice = torch.multinomial(sorted_probs, 1, generator=self._gen)
            return int(order[choice].item())
        return int(torch.multinomial(probs, 1, generator=self._gen).item())
