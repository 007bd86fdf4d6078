"""Test-wide settings."""

import os

# Verilator builds in tests: unoptimized C++ compiles faster; the tests simulate few cycles.
os.environ.setdefault("QFAB_SIM_BUILD", "quick")
