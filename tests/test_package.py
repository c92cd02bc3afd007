"""Package-level checks: the public surface and import hygiene."""

import subprocess
import sys

import veil


def test_public_surface() -> None:
    assert set(veil.__all__) == {"VeilError", "__version__"}


def test_import_veil_is_light() -> None:
    """`import veil` must not pull torch, transformers, web3 or SPU."""
    code = (
        "import sys, veil, veil.cli\n"
        "heavy = {'torch', 'transformers', 'web3', 'spu', 'jax'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_rooms_import_only_from_below() -> None:
    """node and relay never import the client; the client never imports node or engine."""
    code = (
        "import json, sys, importlib\n"
        "out = {}\n"
        "for m in ['veil.node.api', 'veil.relay.app', 'veil.client.session',"
        " 'veil.client.gateway']:\n"
        "    importlib.import_module(m)\n"
        "    out[m] = sorted({x.split('.')[1] for x in sys.modules if x.startswith('veil.')})\n"
        "    for x in [x for x in sys.modules if x.startswith('veil.')]: del sys.modules[x]\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rooms = __import__("json").loads(out.stdout)
    assert "client" not in rooms["veil.node.api"]
    assert not {"client", "node", "engine"} & set(rooms["veil.relay.app"])
    assert not {"node", "engine", "relay"} & set(rooms["veil.client.session"])
    assert not {"node", "engine", "relay", "mpc"} & set(rooms["veil.client.gateway"])
