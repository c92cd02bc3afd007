"""The ctranslate2 backend's greedy tokens against the builtin (reference) engine's.

CTranslate2 runs int8 weights, the reference fp32: their logits differ by quantization noise,
so where the reference's top two tokens are nearly tied the fast backend may take the other
one. The allowance: the two token sequences must be equal up to their first difference, and
there the reference model, re-scoring the common prefix in one pass, must rate the two tokens
within `NEAR_TIE` logits of each other, either way round (a one-pass re-score of a true tie
can flip it too). After a difference the continuations are free to part. This is the rule a
validator re-scoring a node's answer with the reference model can apply too. Measured on these
six prompts (32 tokens each): one answer equal, five parting at tokens 5 to 12 at gaps of
0.004 to 0.35 logits.
"""

from __future__ import annotations

import pytest
import torch

from veil.engine import ChatMessage, SamplingParams, TokenDelta

pytestmark = pytest.mark.slow

NEAR_TIE = 1.0  # logits; int8 noise measured on these prompts stays well below this
PROMPTS = [
    "What is the capital of France?",
    "Tell me a joke about computers.",
    "Name three primary colors.",
    "Write one sentence about the sea.",
    "Explain photosynthesis in two sentences.",
    "List the days of the week.",
]


def greedy(engine, ids: list[int], n: int = 32) -> list[int]:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_tokens=n, temperature=0)
    return [e.token_id for e in engine.submit(ids, params) if isinstance(e, TokenDelta)]


def test_greedy_tokens_match_the_reference_but_for_near_ties(  # type: ignore[no-untyped-def]
    builtin_engine, ct2_engine, loaded_model
) -> None:
    for text in PROMPTS:
        ids = builtin_engine.encode_chat([ChatMessage("user", text)])
        assert ct2_engine.encode_chat([ChatMessage("user", text)]) == ids
        ref, fast = greedy(builtin_engine, ids), greedy(ct2_engine, ids)
        if ref == fast:
            continue
        at = next(
            (i for i, (a, b) in enumerate(zip(ref, fast, strict=False)) if a != b),
            min(len(ref), len(fast)),
        )
        if at == min(len(ref), len(fast)):
            continue  # one ended (end of sequence, not streamed) where the other went on
        with torch.inference_mode():
            logits = loaded_model.model(input_ids=torch.tensor([ids + ref[:at]])).logits[0, -1]
        gap = float(logits[ref[at]] - logits[fast[at]])
        assert abs(gap) < NEAR_TIE, f"prompt {PROMPTS.index(text)}: token {at} differs by {gap}"
