"""The validator role: re-score a node's answer with the approved reference model and say,
step by step, whether the node served the model it claims (see `check_answer`)."""

from veil.validator.evidence import (
    EvidenceBundle,
    EvidenceMalformed,
    check_with_receipt,
    parse_bundle,
    recheck,
)
from veil.validator.receipt_steps import RECEIPT_STEPS, check_receipt_steps
from veil.validator.rescore import TokenScore, rescore
from veil.validator.verdict import (
    Answer,
    ChatRequest,
    Report,
    Step,
    Tolerances,
    ValidatorError,
    check_answer,
    load_reference,
)

__all__ = [
    "RECEIPT_STEPS",
    "Answer",
    "ChatRequest",
    "EvidenceBundle",
    "EvidenceMalformed",
    "Report",
    "Step",
    "TokenScore",
    "Tolerances",
    "ValidatorError",
    "check_answer",
    "check_receipt_steps",
    "check_with_receipt",
    "load_reference",
    "parse_bundle",
    "recheck",
    "rescore",
]
