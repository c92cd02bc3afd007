"""Sessions that run in this process: plaintext JAX (the reference) and SPU simulation.

`SimSession` runs the real SPU protocol, but all parties are threads of one process joined by
in-memory links, so it proves correctness only, never privacy. Use `RemoteSession` for that.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from veil.mpc.model import BUCKET, LayerWeights, LlamaShape, layers_step, make_step_inputs
from veil.mpc.runtime import MpcConfig, ShareCodec, simulate_parties

__all__ = ["PlainSession", "SimSession"]


class PlainSession:
    """The layers in plaintext JAX with the same padding, cache growth and outputs as under MPC."""

    def __init__(self, shape: LlamaShape, weights: LayerWeights) -> None:
        import jax

        self.shape, self.weights = shape, weights
        self._step = jax.jit(functools.partial(layers_step, shape))
        self.capacity = self.length = 0
        self.k: np.ndarray  # the layers' key cache, set by reset()
        self.v: np.ndarray  # the value cache
        self.valid: np.ndarray  # which cache slots hold tokens

    def _run(self, hidden: np.ndarray, new_valid: np.ndarray) -> np.ndarray:
        n = hidden.shape[0]
        while self.length + n > self.capacity:
            grow = ((0, 0), (0, 0), (0, BUCKET), (0, 0))
            self.k, self.v = np.pad(self.k, grow), np.pad(self.v, grow)
            self.valid = np.pad(self.valid, (0, BUCKET))
            self.capacity += BUCKET
        si = make_step_inputs(self.shape, self.length, n, self.capacity)
        out, self.k, self.v, self.valid = self._step(
            self.weights, hidden, self.k, self.v, self.valid, new_valid,
            si.start, si.cos, si.sin, si.causal, si.diag,
        )  # fmt: skip
        self.length += n
        return np.asarray(out).reshape(-1)

    def prefill(self, hidden: np.ndarray, valid: np.ndarray) -> np.ndarray:
        self.capacity, self.length = 2 * BUCKET, 0
        self.k = np.zeros(self.shape.cache_shape(self.capacity), np.float32)
        self.v = self.k.copy()
        self.valid = np.zeros(self.capacity, np.float32)
        return self._run(hidden, valid)

    def step(self, hidden: np.ndarray) -> np.ndarray:
        return self._run(hidden, np.ones(hidden.shape[0], np.float32))

    def close(self) -> None:
        self.capacity = self.length = 0


class SimSession:
    """All parties as threads over SPU's in-memory links: the real protocol, one process."""

    def __init__(self, shape: LlamaShape, weights: LayerWeights, settings: MpcConfig) -> None:
        self.codec = ShareCodec(settings)
        self._parties, self._all = simulate_parties(settings, shape, weights)

    def _reconstruct(self, outs: list[Any]) -> np.ndarray:
        return np.asarray(self.codec.reconstruct(outs), np.float32).reshape(-1)

    def prefill(self, hidden: np.ndarray, valid: np.ndarray) -> np.ndarray:
        h, v = self.codec.secret(hidden), self.codec.secret(valid)
        return self._reconstruct(self._all(lambda p: p.prefill(h[p.rank], v[p.rank])))

    def step(self, hidden: np.ndarray) -> np.ndarray:
        h = self.codec.secret(hidden)
        return self._reconstruct(self._all(lambda p: p.step(h[p.rank])))

    def close(self) -> None:
        for p in self._parties:
            p.close()
