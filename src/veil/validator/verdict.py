"""The verdict on one answer: named steps, each passed or failed with a reason.

Tolerances keep honest nodes safe: a batched fp32 decode may pick a different token at a
near-tie, so a greedy disagreement passes while the reference's top-1 is within
`tie_margin` logits of the chosen token; sampled answers may put a small fraction of tokens
just outside the top-p set; and a sampled answer's mean log-probability is compared with
what honest sampling gives (a z-score), which a cheaper model's tokens fall well below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from veil.engine import ChatMessage, LoadedModel, encode_chat, load_model
from veil.errors import VeilError
from veil.validator.rescore import TokenScore, rescore

FINISH_REASONS = ("stop", "length")


class ValidatorError(VeilError):
    """The validator cannot run a check (wrong reference model, malformed input)."""


@dataclass(frozen=True)
class ChatRequest:
    """What the node was asked: messages and sampling settings (temperature 0 is greedy)."""

    messages: tuple[ChatMessage, ...]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Answer:
    """What the node answered. `token_ids` are the streamed tokens (an end-of-sequence token
    is not streamed but counts in `completion_tokens`)."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: str
    completion_tokens: int


@dataclass(frozen=True)
class Tolerances:
    tie_margin: float = 0.5  # logits: a greedy pick this close to the top-1 is a near-tie
    max_greedy_misses: float = 0.0  # fraction of greedy tokens allowed beyond the margin
    top_p_slack: float = 0.02  # probability mass beyond top_p still counted inside the set
    # fraction of sampled tokens allowed outside top-k/top-p (at least one token): honest
    # batched answers were seen with one token at mass 0.97 under top_p 0.9 (not yet explained)
    max_out_of_set: float = 0.05
    min_logprob_z: float = -5.0  # sampled answers: z-score of the summed logprob, at least
    min_tokens_for_z: int = 16  # shorter answers are too noisy for the z-score


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    reason: str


@dataclass
class Report:
    """The validator's findings, in order; it passes when every step passes."""

    steps: list[Step] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.ok for s in self.steps)

    def failed(self) -> list[str]:
        return [s.name for s in self.steps if not s.ok]

    def add(self, name: str, ok: bool, reason: str) -> None:
        self.steps.append(Step(name, ok, reason))

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "steps": [{"name": s.name, "ok": s.ok, "reason": s.reason} for s in self.steps],
        }


def load_reference(approved_weights_sha256: str, path: str | None = None) -> LoadedModel:
    """Load the reference model, refusing weights whose hash is not the approved one."""
    loaded = load_model(path)
    if loaded.weights_sha256 != approved_weights_sha256.lower():
        raise ValidatorError(
            f"reference weights {loaded.weights_sha256} are not the approved "
            f"{approved_weights_sha256}"
        )
    return loaded


def check_answer(
    reference: LoadedModel,
    request: ChatRequest,
    answer: Answer,
    tolerances: Tolerances | None = None,
    *,
    model: Any = None,  # the torch model to score with; the reference's own by default
) -> Report:
    """Check a node's answer against the reference model; never raises on a bad answer."""
    tol = tolerances or Tolerances()
    report = Report()
    tok = reference.tokenizer
    vocab = int(getattr(reference.model.config, "vocab_size", 0)) or len(tok)
    ids = list(answer.token_ids)
    if any(not isinstance(t, int) or not 0 <= t < vocab for t in ids):
        report.add("tokens", False, "an answer token id is outside the vocabulary")
        return report
    report.add("tokens", True, f"{len(ids)} token ids in the vocabulary")
    if not _check_shape(report, reference, request, answer):
        return report
    prompt = encode_chat(tok, list(request.messages))
    eos_implied = answer.finish_reason == "stop" and answer.completion_tokens == len(ids) + 1
    scored_ids = [*ids, min(reference.eos_token_ids)] if eos_implied else ids
    scores = rescore(model or reference.model, prompt, scored_ids, request.temperature)
    if eos_implied:
        _check_eos(report, request, scores[-1], tol)
    if request.temperature == 0:
        _check_greedy(report, scores, tol)
    else:
        _check_sampled(report, request, scores, tol)
    return report


def _check_shape(
    report: Report, reference: LoadedModel, request: ChatRequest, answer: Answer
) -> bool:
    """Counts, finish reason, stop strings and text against the token ids."""
    ids = list(answer.token_ids)
    n = len(ids)
    if answer.finish_reason not in FINISH_REASONS:
        report.add("finish", False, f"finish_reason {answer.finish_reason!r} is not stop/length")
        return False
    if answer.completion_tokens not in (n, n + 1) or (
        answer.completion_tokens == n + 1 and answer.finish_reason != "stop"
    ):
        report.add(
            "usage", False, f"completion_tokens {answer.completion_tokens} for {n} streamed tokens"
        )
        return False
    report.add("usage", True, f"completion_tokens {answer.completion_tokens} match")
    if any(t in reference.eos_token_ids for t in ids):
        report.add("finish", False, "an end-of-sequence token inside the answer")
        return False
    decoded = reference.tokenizer.decode(ids, skip_special_tokens=True)
    stop_at = [decoded.find(s) for s in request.stop if s in decoded]
    if answer.finish_reason == "length":
        if answer.completion_tokens != request.max_tokens:
            report.add(
                "finish",
                False,
                f"length after {answer.completion_tokens} of max_tokens {request.max_tokens}",
            )
            return False
        if stop_at:
            report.add("finish", False, "length claimed but a stop string occurs")
            return False
        report.add("finish", True, "length at max_tokens")
    else:
        if answer.completion_tokens > request.max_tokens:
            report.add("finish", False, "more tokens than max_tokens")
            return False
        if answer.completion_tokens == n and not stop_at:
            report.add("finish", False, "stop claimed without end-of-sequence or stop string")
            return False
        report.add("finish", True, "stop at end-of-sequence or a stop string")
    expected_text = decoded[: min(stop_at)] if stop_at else decoded
    if answer.text != expected_text:
        report.add("text", False, "the answer text is not the decoded tokens")
        return False
    report.add("text", True, "the answer text is the decoded tokens")
    return True


def _check_eos(report: Report, request: ChatRequest, eos: TokenScore, tol: Tolerances) -> None:
    if request.temperature == 0:
        ok = eos.top1_gap <= tol.tie_margin
    else:
        ok = _in_set(request, eos, tol) or eos.logprob > math.log(1e-4)
    report.add(
        "eos",
        ok,
        f"end-of-sequence has rank {eos.rank}, logprob {eos.logprob:.2f} under the reference",
    )


def _check_greedy(report: Report, scores: list[TokenScore], tol: Tolerances) -> None:
    if not scores:
        report.add("greedy", True, "no tokens to score")
        return
    ties = sum(1 for s in scores if s.rank > 0 and s.top1_gap <= tol.tie_margin)
    misses = [i for i, s in enumerate(scores) if s.top1_gap > tol.tie_margin]
    ok = len(misses) <= tol.max_greedy_misses * len(scores)
    where = f"; first at token {misses[0]} (gap {scores[misses[0]].top1_gap:.2f})" if misses else ""
    report.add(
        "greedy",
        ok,
        f"{len(scores) - len(misses) - ties} top-1, {ties} near-ties, {len(misses)} misses"
        f" of {len(scores)}{where}",
    )


def _in_set(request: ChatRequest, s: TokenScore, tol: Tolerances) -> bool:
    if request.top_k and s.rank >= request.top_k:
        return False
    return s.top_p_mass_before < min(request.top_p + tol.top_p_slack, 1.0 + 1e-6)


def _check_sampled(
    report: Report, request: ChatRequest, scores: list[TokenScore], tol: Tolerances
) -> None:
    n = len(scores)
    if not n:
        report.add("sample-set", True, "no tokens to score")
        return
    outside = sum(1 for s in scores if not _in_set(request, s, tol))
    report.add(
        "sample-set",
        outside <= max(1.0, tol.max_out_of_set * n),
        f"{outside} of {n} tokens outside the top-k/top-p set",
    )
    if n < tol.min_tokens_for_z or request.top_p < 1.0 or request.top_k:
        # truncation reshapes the distribution; the set check above carries the weight there
        report.add("likelihood", True, f"not scored ({n} tokens, truncated sampling or short)")
        return
    excess = sum(s.logprob - s.expected_logprob for s in scores)
    spread = math.sqrt(sum(s.logprob_var for s in scores)) or 1.0
    z = excess / spread
    report.add(
        "likelihood",
        z >= tol.min_logprob_z,
        f"summed logprob z-score {z:.1f} (at least {tol.min_logprob_z})",
    )
