"""Fixtures for target tests: the aarch64 runtime under qemu is ``aarch64_root`` in the
top-level conftest (the fleet tests use it too)."""
