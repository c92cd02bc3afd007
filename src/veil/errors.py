"""Root of the exception tree; every room (wire, engine, chain, node, client...) subclasses it."""

__all__ = ["VeilError"]


class VeilError(Exception):
    """Base class of every error Veil raises on purpose."""
