"""Puts `tests/` on sys.path so the shared `attest_support` module imports."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
