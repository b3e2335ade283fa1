"""What kind of program the user asked to record: its ELF architecture, and so
which qemu-<arch> runs it."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from .errors import CannoliError

# (e_machine, ELF class, little endian) -> QEMU user-mode target name
_QEMU_TARGETS = {
    ("EM_X86_64", 64, True): "x86_64",
    ("EM_386", 32, True): "i386",
    ("EM_AARCH64", 64, True): "aarch64",
    ("EM_ARM", 32, True): "arm",
    ("EM_RISCV", 64, True): "riscv64",
    ("EM_RISCV", 32, True): "riscv32",
    ("EM_MIPS", 32, True): "mipsel",
    ("EM_MIPS", 32, False): "mips",
    ("EM_MIPS", 64, True): "mips64el",
    ("EM_MIPS", 64, False): "mips64",
    ("EM_PPC64", 64, True): "ppc64le",
    ("EM_PPC64", 64, False): "ppc64",
    ("EM_S390", 64, False): "s390x",
}


@dataclass(frozen=True)
class GuestBinary:
    path: str
    arch: str            # QEMU target name: x86_64, aarch64, ...
    machine: str         # ELF e_machine
    elf_class: int
    little_endian: bool
    interpreter: str | None  # PT_INTERP of a dynamically linked program


def resolve_program(program: str) -> str:
    """The path of `program`, looked up on PATH like a shell would when it has no '/'."""
    if os.sep not in program:
        found = shutil.which(program)
        if found:
            return found
    if not os.path.exists(program):
        raise CannoliError(f"{program}: no such file; give the path of the program to record")
    if os.path.isdir(program):
        raise CannoliError(f"{program}: is a directory; give the path of the program to record")
    if not os.access(program, os.R_OK):
        raise CannoliError(f"{program}: not readable; check its permissions")
    return program


def inspect(program: str) -> GuestBinary:
    path = resolve_program(program)
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                raise CannoliError(
                    f"{program}: not an ELF executable; cannoli records Linux ELF programs "
                    f"(for a script, record its interpreter: cannoli record /usr/bin/python3 script.py)"
                )
            f.seek(0)
            elf = ELFFile(f)
            machine = elf["e_machine"]
            elf_class = elf.elfclass
            little = elf.little_endian
            interp = None
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_INTERP":
                    interp = seg.get_interp_name()
    except ELFError as exc:
        raise CannoliError(f"{program}: damaged ELF file ({exc})") from None
    except OSError as exc:
        raise CannoliError(f"{program}: cannot read ({exc.strerror})") from None
    arch = _QEMU_TARGETS.get((machine, elf_class, little))
    if arch is None:
        raise CannoliError(
            f"{program}: {machine} ({elf_class}-bit, {'little' if little else 'big'}-endian) "
            f"has no QEMU user-mode emulator; supported: x86_64, aarch64, arm, riscv64, mipsel and others QEMU runs"
        )
    return GuestBinary(path, arch, machine, elf_class, little, interp)
