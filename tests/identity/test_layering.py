"""veil.identity is a bottom room: it imports only veil.errors, veil.wire and libraries."""

from __future__ import annotations

import json
import subprocess
import sys

import veil.identity


def test_identity_imports_nothing_above_it() -> None:
    code = (
        "import json, sys, veil.identity\n"
        "rooms = {m.split('.')[1] for m in sys.modules if m.startswith('veil.')}\n"
        "heavy = {'torch', 'dcap_qvl', 'web3', 'httpx'} & set(sys.modules)\n"
        "print(json.dumps([sorted(rooms), sorted(heavy)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rooms, heavy = json.loads(out.stdout)
    assert set(rooms) <= {"errors", "wire", "identity"}
    assert heavy == []


def test_public_surface_resolves() -> None:
    assert len(set(veil.identity.__all__)) == len(veil.identity.__all__)
    for name in veil.identity.__all__:
        assert getattr(veil.identity, name) is not None
