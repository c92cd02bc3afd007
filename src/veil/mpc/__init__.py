"""Cryptographic private mode: the transformer layers on secret shares across SPU parties.

Importing this package is light; jax, spu and torch load only inside the functions that need them.
"""
