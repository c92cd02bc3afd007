"""The node's errors. HTTP answers are `veil.wire.http.OpenAIError` (OpenAI-style bodies)."""

from __future__ import annotations

from veil.errors import VeilError
from veil.wire.http import OpenAIError, error_body

__all__ = ["APIError", "NodeSetupError", "error_body"]

# The node's name for the one OpenAI-style error (`veil.wire.http`).
APIError = OpenAIError


class NodeSetupError(VeilError):
    """The node cannot start: unreadable or unsafe key file, bad model path."""
