"""Per-architecture syscall tables: number -> name, and which arguments matter
for the address-space (mmaps) derivation.  One module per architecture."""

from __future__ import annotations

from importlib import import_module


def names(arch: str) -> dict[int, str]:
    """Syscall names for `arch` (a QEMU target name); empty if unknown."""
    try:
        return import_module(f"{__name__}.{arch}").NAMES
    except ModuleNotFoundError:
        return {}
