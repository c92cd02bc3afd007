"""veil.chain's public surface, and that importing it and its command stays light."""

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
