"""Errors the Veil client raises; none of them carries request or response content.

```
VeilError
 ├─ ClientError
 │   ├─ RequestNotSendable    the request cannot be carried as binary HTTP (nothing was sent)
 │   ├─ RelayRefused          the relay answered with an error (rate limit, size, unknown node...)
 │   ├─ GatewayRefused        the node's gateway refused the encapsulated request
 │   ├─ ResponseRefused       the answer failed authentication or is malformed: nothing is shown
 │   │   ├─ TruncatedResponse the answer stopped before its final authenticated chunk
 │   │   │   └─ RelayBroke    ...because the connection to the relay broke (the node may be fine)
 │   │   └─ ReceiptRefused    the answer's receipt is missing or does not verify (`check`)
 │   ├─ DescriptorUnavailable the node's descriptor could not be fetched (nothing was sent)
 │   ├─ PriceAboveLimit       a node asks more per request than the payer's limits allow
 │   ├─ NoPartyQuorum         too few verified nodes host a matching MPC party (nothing sent)
 │   │   └─ PartiesBusy       enough of them, but too many already run a session of ours
 │   └─ ReceiptStoreError     the local receipt store cannot be opened or written
 │       └─ HistoryLocked     stored history needs the right passphrase or key file
 └─ AttestError               (veil.attest.errors; re-exported here)
     ├─ NodeRejected          a node failed verification under the policy (`check`, `report`)
     ├─ PolicyConfigError     a policy or release list that cannot be used as configured
     └─ KeyConfigError        the node's key list could not be fetched, parsed or accepted
```
The policy errors live with the policy in `veil.attest` (the policy raises them, and attest
sits below the client); catch `(ClientError, AttestError)`, or `VeilError`, for both.
"""

from __future__ import annotations

from veil.attest.errors import KeyConfigError, NodeRejected, PolicyConfigError
from veil.errors import VeilError

__all__ = [
    "ClientError",
    "DescriptorUnavailable",
    "GatewayRefused",
    "HistoryLocked",
    "KeyConfigError",
    "NoPartyQuorum",
    "NodeRejected",
    "PartiesBusy",
    "PolicyConfigError",
    "PriceAboveLimit",
    "ReceiptRefused",
    "ReceiptStoreError",
    "RelayBroke",
    "RelayRefused",
    "RequestNotSendable",
    "ResponseRefused",
    "TruncatedResponse",
]


class ClientError(VeilError):
    """Base of the client's errors."""


class RequestNotSendable(ClientError):
    """The request cannot be encoded (a method or header binary HTTP refuses); nothing was sent."""


class _Refused(ClientError):
    def __init__(self, message: str, *, status: int, problem_type: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.problem_type = problem_type


class RelayRefused(_Refused):
    """The relay refused to forward (or could not reach the node); `status`, `problem_type`."""


class GatewayRefused(_Refused):
    """The gateway refused the request (unknown key after a refetch, replay, bad suite...)."""


class ResponseRefused(ClientError):
    """The encapsulated answer did not authenticate or parse; its content is never returned."""


class TruncatedResponse(ResponseRefused):
    """The answer ended before its final chunk: it was cut in transit or by the node."""


class RelayBroke(TruncatedResponse):
    """The connection to the relay broke or timed out during the answer. A node that fails
    mid-answer does not look like this: the relay then ends its own answer cleanly and the
    sealed stream lacks its final chunk (a plain `TruncatedResponse`). So this one is the
    relay's failure (or the network's), and says nothing against the node."""


class ReceiptRefused(ResponseRefused):
    """The answer's receipt is missing, malformed, or not this node's signature over exactly
    this request, answer and model. A whole answer is then never returned; a streamed one
    raises this at its end, before `[DONE]`.

    `check` names the failed check: `missing`, `malformed`, `request_digest`, `signature`,
    `signer`, `answer_digest`, `model_hash`, `usage`, `ticket_id` or `model`; `cause` is the
    identity error.
    """

    def __init__(self, message: str, *, check: str, cause: Exception | None = None) -> None:
        super().__init__(message)
        self.check = check
        self.cause = cause


class DescriptorUnavailable(ClientError):
    """The node's signed descriptor could not be fetched (via the relay); nothing was sent."""


class PriceAboveLimit(ClientError):
    """A node's ticket offer is above the payer's limits: nothing is paid or sent to it."""


class NoPartyQuorum(ClientError):
    """Fewer verified nodes than the protocol needs, of distinct operators, host an MPC party
    for the model with the protocol and weights asked for. Nothing was sent to any party."""


class PartiesBusy(NoPartyQuorum):
    """Enough party nodes exist, but too many of them already run one of this client's
    sessions (a party runs one session at a time). Nothing was sent; try again later."""


class ReceiptStoreError(ClientError):
    """The receipt store cannot be opened, is not one, or refuses a write."""


class HistoryLocked(ReceiptStoreError):
    """Encrypted history needs its passphrase or key file, and the one given does not open it."""
