"""Per-architecture syscall tables: number -> name (<arch>.py) and the ABI
constants (<arch>_abi.py), one module each per cannoli_db.arch entry."""

from __future__ import annotations

from .. import arch as guest_arch

# the 32-bit targets' word masks
_NARROW = {a.name: a.word_mask for a in guest_arch.ARCHES.values() if a.pointer_size < 8}


def word(arch: str, value: int) -> int:
    """A syscall argument as the guest saw it: QEMU hands a 32-bit guest's
    registers over sign-extended to 64 bits."""
    mask = _NARROW.get(arch)
    return value if mask is None else value & mask


def result(arch: str, ret: int | None) -> int | None:
    """A return value: an error stays -errno, anything else is the guest's word."""
    if ret is None or -4095 <= ret < 0:
        return ret
    return word(arch, ret)


def names(arch: str) -> dict[int, str]:
    """Syscall names for `arch` (a cannoli_db.arch name; a CannoliError for another)."""
    return guest_arch.get(arch).syscall_names
