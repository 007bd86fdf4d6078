"""Dependency-free foundations every layer may import: user-facing errors and integer ranges."""
