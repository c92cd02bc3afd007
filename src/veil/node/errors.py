"""The node's errors.

    VeilError
    └── NodeError
        ├── NodeSetupError     the node cannot start
        └── PaymentRefused     a request's ticket does not pay for it, or cannot be checked now

They say what went wrong in the node's own terms; `veil.node.api` turns a `PaymentRefused`
into its HTTP answer (an OpenAI-style body, `veil.wire.http.OpenAIError`).
"""

from __future__ import annotations

from veil.errors import VeilError

__all__ = ["NodeError", "NodeSetupError", "PaymentRefused"]


class NodeError(VeilError):
    """Base class of the node's errors."""


class NodeSetupError(NodeError):
    """The node cannot start: unreadable or unsafe key file, bad model path."""


class PaymentRefused(NodeError):
    """The desk refuses a request's payment; `code` says why, `message` tells the payer how
    to fix it.

    `status` is 402 when the ticket itself does not pay (a `payment_error`), 503 when the node
    cannot check or record payments right now (a `server_error`: the chain or the ticket
    queue is unavailable), so a payer can tell an outage from its own mistake.
    """

    def __init__(self, code: str, message: str, status: int = 402) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    @property
    def type(self) -> str:
        """The OpenAI-style error type of the answer."""
        return "payment_error" if self.status == 402 else "server_error"
