"""veil.chain's public surface and import hygiene."""

import json
import subprocess
import sys

import veil.chain


def test_all_names_resolve() -> None:
    for name in veil.chain.__all__:
        assert getattr(veil.chain, name) is not None, name
    assert sorted(dir(veil.chain)) == sorted(veil.chain.__all__)


def test_importing_chain_and_its_cli_is_light() -> None:
    code = (
        "import sys, veil.chain, veil.commands.chain, veil.cli\n"
        "heavy = {'web3', 'vyper', 'boa', 'torch', 'eth_account'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_chain_imports_nothing_above_it() -> None:
    """veil.chain sits beside engine/attest: it may use only errors, wire and identity."""
    code = (
        "import json, sys\n"
        "import veil.chain.client, veil.chain.deployment, veil.chain.devnet\n"
        "import veil.chain.releases, veil.chain.tickets, veil.chain.transact\n"
        "rooms = {m.split('.')[1] for m in sys.modules if m.startswith('veil.')}\n"
        "print(json.dumps(sorted(rooms)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(json.loads(out.stdout)) <= {"errors", "wire", "identity", "chain"}
