"""Dependency-free foundations every layer may import (standard library only): user-facing errors
(`errors`), integer code ranges and widths (`ints`), numbers hardware and estimates share
(`limits`), and optional dependencies that name their extra (`extras`)."""
