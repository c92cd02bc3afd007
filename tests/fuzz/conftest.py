"""Fuzz targets for every parser of outside input: the hypothesis profile they run under.

`VEIL_FUZZ_EXAMPLES=N` (read here, at collection time: tests/conftest.py clears VEIL_* per test)
sets the example count of the `veil-fuzz` profile for a longer run; without it every target
runs a small bounded count, so the whole directory fits in CI. Targets scale that count with
`fuzzkit.fuzz(scale)`. The parsers run under Python's default recursion limit (what
`veil.wire.boundedjson.cap_recursion_limit` sets in a service), so deep nesting that reaches a
recursive decoder shows up as a RecursionError instead of a crashed process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from veil.wire.boundedjson import SAFE_RECURSION_LIMIT

CI_EXAMPLES = 40
_examples = os.environ.get("VEIL_FUZZ_EXAMPLES", "")
LONG_RUN = _examples.isdigit() and int(_examples) > 0

settings.register_profile(
    "veil-fuzz",
    max_examples=int(_examples) if LONG_RUN else CI_EXAMPLES,
    # A long run has time to catch slow inputs; CI machines are too loaded for a deadline.
    deadline=10_000 if LONG_RUN else None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A failing example can be a 70 KB string: let hypothesis print it without a warning."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.filterwarnings("ignore:Generating overly large repr"))


@pytest.fixture(autouse=True)
def _service_recursion_limit() -> Iterator[None]:
    """The recursion limit a Veil service runs with (py_ecc raises it to 100,000 at import)."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(SAFE_RECURSION_LIMIT)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)
