"""Veil: private, verifiable, decentralized AI inference.

Importing `veil` is cheap: heavy dependencies (torch, transformers, web3, SPU) load only
in the sub-packages that need them.
"""

from veil.errors import VeilError

__version__ = "0.1.0"

__all__ = ["VeilError", "__version__"]
