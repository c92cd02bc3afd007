"""Package-level checks: the public surface, and that `import veil` stays light (which room
may import which is tests/test_layering.py)."""

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
