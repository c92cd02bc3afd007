"""One teacher-forced forward pass over prompt + answer: what the reference model thought of
each token the node chose. Re-scoring costs one prefill, far less than re-generating."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TokenScore:
    """The reference model's view of one generated token."""

    token_id: int
    rank: int  # tokens with a strictly higher logit (0: the reference's own greedy choice)
    top1_gap: float  # top-1 logit minus this token's logit (0 when it is the top-1)
    logprob: float  # log-probability at the request's temperature (1 when greedy)
    expected_logprob: float  # minus the entropy there: the mean logprob of an honest sample
    logprob_var: float  # variance of the logprob of an honest sample there
    top_p_mass_before: float  # probability mass of the tokens ranked above this one


def rescore(
    model: Any, prompt_ids: list[int], answer_ids: list[int], temperature: float
) -> list[TokenScore]:
    """Score `answer_ids` as continuations of `prompt_ids` under `model` (fp32, no cache)."""
    import torch

    if not answer_ids:
        return []
    ids = torch.tensor([list(prompt_ids) + list(answer_ids)], dtype=torch.long)
    with torch.inference_mode():
        logits = model(input_ids=ids, use_cache=False).logits[0].float()
    start = len(prompt_ids) - 1
    rows = logits[start : start + len(answer_ids)]
    chosen = torch.tensor(answer_ids, dtype=torch.long)
    chosen_logit = rows.gather(1, chosen[:, None])[:, 0]
    top1 = rows.max(dim=1).values
    ranks = (rows > chosen_logit[:, None]).sum(dim=1)
    t = temperature if temperature > 0 else 1.0
    logp = torch.log_softmax(rows / t, dim=1)
    p = logp.exp()
    chosen_logp = logp.gather(1, chosen[:, None])[:, 0]
    entropy_term = (p * logp).sum(dim=1)  # E[logp] = -H
    var = (p * logp.square()).sum(dim=1) - entropy_term.square()
    mass_before = (p * (rows > chosen_logit[:, None])).sum(dim=1)
    out = []
    for i, tok in enumerate(answer_ids):
        out.append(
            TokenScore(
                token_id=int(tok),
                rank=int(ranks[i]),
                top1_gap=float(top1[i] - chosen_logit[i]),
                logprob=float(chosen_logp[i]) if math.isfinite(float(chosen_logp[i])) else -1e9,
                expected_logprob=float(entropy_term[i]),
                logprob_var=max(float(var[i]), 0.0),
                top_p_mass_before=float(mass_before[i]),
            )
        )
    return out
