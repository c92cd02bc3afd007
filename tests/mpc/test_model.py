"""The plaintext JAX layers: padding must not change results, and they must match torch."""

from __future__ import annotations

import numpy as np
import pytest

from veil.mpc.client import generate, prefill_prompt
from veil.mpc.local import PlainSession
from veil.mpc.model import BUCKET, make_step_inputs
from veil.mpc.source import ModelSource


def _unpadded_logits(src: ModelSource, ids: list[int]) -> np.ndarray:
    """Reference without buckets: the exact prompt, right at slot 0, cache exactly its size."""
    import jax

    from veil.mpc.model import layers_step

    n = len(ids)
    k = np.zeros(src.shape.cache_shape(n), np.float32)
    si = make_step_inputs(src.shape, 0, n, n)
    out, *_ = jax.jit(layers_step, static_argnums=0)(
        src.shape, src.weights, src.head.embed(ids, n), k, k.copy(), np.zeros(n, np.float32),
        np.ones(n, np.float32), si.start, si.cos, si.sin, si.causal, si.diag,
    )  # fmt: skip
    return src.head.logits(np.asarray(out)[0])


@pytest.mark.parametrize("n", [1, 5, BUCKET, BUCKET + 7])
def test_left_padding_changes_nothing(tiny: ModelSource, n: int) -> None:
    ids = [(7 * i + 3) % 256 for i in range(n)]
    padded = prefill_prompt(PlainSession(tiny.shape, tiny.weights), tiny.head, ids)
    np.testing.assert_allclose(padded, _unpadded_logits(tiny, ids), atol=1e-4, rtol=1e-4)


def test_decode_crosses_cache_buckets(tiny: ModelSource) -> None:
    """Greedy decoding through two cache growths equals recomputing each prefix from scratch."""
    ids = [(5 * i + 1) % 256 for i in range(BUCKET + 20)]
    out = list(generate(PlainSession(tiny.shape, tiny.weights), tiny.head, ids, 50))
    seq = ids + out
    for t in (0, 1, 32, 33, 49):  # 52 tokens fill 64 slots: steps 1 and 33 grow the cache
        assert int(np.argmax(_unpadded_logits(tiny, seq[: len(ids) + t]))) == out[t]


@pytest.mark.slow
def test_jax_layers_match_torch() -> None:
    """The real SmolLM2: logits close and the first greedy tokens identical to the torch engine,
    with the exact SiLU (tight) and with the MPC programs' polynomial SiLU (within 0.25)."""
    import dataclasses

    import torch

    from veil.engine import ChatMessage, encode_chat
    from veil.mpc.source import load_source

    src = load_source("smollm2")
    assert src.shape.silu == "poly"  # what the parties run
    prompts = (
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "2+2=",
        "Explain photosynthesis in one sentence.",
        "Who wrote Hamlet?",
    )
    for prompt in prompts:
        ids = encode_chat(src.tokenizer, [ChatMessage("user", prompt)])
        with torch.no_grad():
            ref = src.torch_model(torch.tensor([ids])).logits[0, -1].numpy()
            ref_tokens = src.torch_model.generate(
                torch.tensor([ids]), max_new_tokens=8, do_sample=False
            )[0, len(ids) :].tolist()
        for silu, atol in (("exact", 2e-3), ("poly", 0.25)):
            shape = dataclasses.replace(src.shape, silu=silu)
            logits = prefill_prompt(PlainSession(shape, src.weights), src.head, ids)
            np.testing.assert_allclose(logits, ref, atol=atol)
            tokens = list(generate(PlainSession(shape, src.weights), src.head, ids, 8))
            assert tokens[: len(ref_tokens)] == ref_tokens, (prompt, silu)


def test_silu_polynomial_is_close_everywhere() -> None:
    """The piecewise SiLU: within 0.0011 inside the polynomial's range, 0.034 outside, exact
    far out, and continuous enough at the edge."""
    import jax

    from veil.mpc.model import SILU_EDGE, _silu

    x = np.linspace(-60, 60, 240_001, dtype=np.float32)
    got = np.asarray(_silu(x, "poly"))
    want = np.asarray(jax.nn.silu(x))
    inside = np.abs(x) <= SILU_EDGE
    assert np.abs(got - want)[inside].max() < 1.2e-3
    assert np.abs(got - want)[~inside].max() < 0.035
    assert np.abs(got - want)[np.abs(x) > 12].max() < 1e-4


def test_unknown_silu_mode_is_refused() -> None:
    import dataclasses

    from veil.mpc.source import TINY_SHAPE

    with pytest.raises(ValueError, match="silu"):
        dataclasses.replace(TINY_SHAPE, silu="relu")
