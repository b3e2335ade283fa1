"""Per-architecture syscall tables: number -> name, and which arguments matter
for the address-space (mmaps) derivation.  One module per architecture."""

from __future__ import annotations

from importlib import import_module


WORD_BITS_32 = {"arm", "mipsel", "mips", "i386", "riscv32"}


def word(arch: str, value: int) -> int:
    """A syscall argument as the guest saw it: QEMU hands a 32-bit guest's
    registers over sign-extended to 64 bits."""
    return value & 0xFFFFFFFF if arch in WORD_BITS_32 else value


def result(arch: str, ret: int | None) -> int | None:
    """A return value: an error stays -errno, anything else is the guest's word."""
    if ret is None or -4095 <= ret < 0:
        return ret
    return ret & 0xFFFFFFFF if arch in WORD_BITS_32 else ret


def names(arch: str) -> dict[int, str]:
    """Syscall names for `arch` (a QEMU target name); empty if unknown."""
    try:
        return import_module(f"{__name__}.{arch}").NAMES
    except ModuleNotFoundError:
        return {}
