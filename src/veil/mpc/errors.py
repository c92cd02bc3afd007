"""MPC errors. Each has a stable `code`, so a party can send it to the client and the client can
raise the same type again.

    MpcError
     +-- MpcConfigError        protocol/world size/rank that cannot work
     +-- InvalidRequest        a chat request the client-side model cannot take (`param`)
     +-- SessionError
     |    +-- UnknownSession   no such session id (never opened, closed, or wiped)
     |    +-- SessionExpired   the session timed out and its state was wiped
     |    +-- SessionExists    the id is already in use (a party opening twice)
     |    +-- PartyBusy        the party already runs another session
     +-- BadShare              a share of the wrong shape, dtype, visibility or encoding
     +-- ProtocolViolation     a malformed or unexpected message on the control channel
     +-- PartyFailure          a party died or an SPU run failed; the session is over
     |    +-- LinkFailure      the parties could not link for a session (a peer is down, or
     |                         mutual TLS failed: a certificate is not the one the client gave)
     +-- PartyUnavailable      the node reached hosts no MPC party (`veil node serve` without
                               --mpc-link)
"""

from __future__ import annotations

from veil.errors import VeilError

__all__ = [
    "BadShare",
    "InvalidRequest",
    "LinkFailure",
    "MpcConfigError",
    "MpcError",
    "PartyBusy",
    "PartyFailure",
    "PartyUnavailable",
    "ProtocolViolation",
    "SessionError",
    "SessionExists",
    "SessionExpired",
    "UnknownSession",
    "error_from_code",
]


class MpcError(VeilError):
    """Base of MPC errors."""

    code = "mpc_error"


class MpcConfigError(MpcError):
    code = "config"


class InvalidRequest(MpcError):
    """A chat request refused on the client's side before anything is sent (a sampling value,
    a role, an empty conversation); `param` names the field, as OpenAI error bodies do."""

    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class SessionError(MpcError):
    code = "session"


class UnknownSession(SessionError):
    code = "unknown_session"


class SessionExpired(SessionError):
    code = "session_expired"


class SessionExists(SessionError):
    code = "session_exists"


class PartyBusy(SessionError):
    code = "party_busy"


class BadShare(MpcError):
    code = "bad_share"


class ProtocolViolation(MpcError):
    code = "protocol_violation"


class PartyFailure(MpcError):
    code = "party_failure"


class LinkFailure(PartyFailure):
    code = "link_failure"


class PartyUnavailable(MpcError):
    code = "mpc_unavailable"


_BY_CODE: dict[str, type[MpcError]] = {
    c.code: c
    for c in (
        MpcError,
        MpcConfigError,
        SessionError,
        UnknownSession,
        SessionExpired,
        SessionExists,
        PartyBusy,
        BadShare,
        ProtocolViolation,
        PartyFailure,
        LinkFailure,
        PartyUnavailable,
    )
}


def error_from_code(code: str, message: str) -> MpcError:
    """The typed error a party reported (unknown codes become a plain MpcError)."""
    return _BY_CODE.get(code, MpcError)(message)
