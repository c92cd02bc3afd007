"""Root of Veil's exception tree; each room (wire, engine, chain, attest, node, client) subclasses it."""

__all__ = ["VeilError"]


class VeilError(Exception):
    """Base class of every error Veil raises on purpose."""
