"""Test-wide settings."""

import os

# Verilator builds in tests: unoptimized C++ compiles faster; the tests simulate few cycles.
os.environ.setdefault("QFAB_SIM_BUILD", "quick")


def pytest_collection_modifyitems(config, items):
    """Fast tests first, then those marked slow (bitstreams, large simulations): the first minutes of
    a full run show progress, and a broken edit fails early. Order within each group is kept."""
    items[:] = [i for i in items if i.get_closest_marker("slow") is None] + \
               [i for i in items if i.get_closest_marker("slow") is not None]
