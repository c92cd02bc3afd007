"""veil.identity's public surface, and that importing it stays light (its place in the layers
is checked with every room's, by tests/test_layering.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import veil.identity


def test_importing_identity_is_light() -> None:
    code = (
        "import json, sys, veil.identity\n"
        "heavy = {'torch', 'dcap_qvl', 'web3', 'httpx'} & set(sys.modules)\n"
        "print(json.dumps(sorted(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_public_surface_resolves() -> None:
    assert len(set(veil.identity.__all__)) == len(veil.identity.__all__)
    for name in veil.identity.__all__:
        assert getattr(veil.identity, name) is not None
