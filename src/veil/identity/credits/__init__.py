"""Anonymous credits: blind RSA (RFC 9474) and Privacy Pass token type 0x0002 (RFC 9578).

Kept out of `veil.identity`'s re-exports so that importing identity does not load gmpy2.
"""
