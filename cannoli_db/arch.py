"""The guest architectures Cannoli DB records, in one table: every per-architecture
decision (which qemu-<target> runs an ELF file, how capstone reads its code, which
syscall table and ABI constants apply, which toolchain builds test programs for it)
reads it here.

    arch.get("mipsel")             # the entry, or a CannoliError naming the supported ones
    arch.of_meta(meta, "app.cannoli")  # the entry of a trace (its meta's `arch`)
    arch.by_elf("EM_MIPS", 32, True)   # the entry of an ELF header, or None

Numbers are not written here.  The ABI constants (MAP_ANONYMOUS, F_DUPFD, ...)
come from cannoli_db/syscall_tables/<arch>_abi.py, which tools/gen_syscall_tables.py
generates from each cross compiler's kernel headers; tests/test_arch.py compares the
table with the compilers' C library headers, the ELF files they produce, pyelftools,
capstone and the installed QEMU.  Capstone's constants are named, not imported:
importing capstone takes 50 ms, which `cannoli record` does not need.

Per-architecture *code* stays with its subject, keyed by these names: the call and
return rules of cannoli_db/index/calls.py, unicorn's registers in
cannoli_db/reexec/arches.py, gdb's register layouts in cannoli_db/debug/target_desc.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Mapping

from .errors import CannoliError


@dataclass(frozen=True)
class Arch:
    name: str                # meta.json's `arch`, the name everything here is keyed by
    qemu_target: str         # QEMU's linux-user target: qemu-<target> runs it; the plugin's `target`
    elf_machine: str         # ELF e_machine, as pyelftools names it
    elf_class: int           # 32 or 64
    little_endian: bool
    triplet: str             # Debian's GNU triplet: the <triplet>-gcc cross compiler, the /usr/<triplet> sysroot
    capstone_arch: str       # capstone constant names (see the module docstring)
    capstone_mode: tuple[str, ...]
    pc_register: str         # the ISA's name of the pc (Tenet traces, gdb); the trace calls it "pc"
    sp_register: str         # the stack pointer's recorded name (docs/format.md §4a)
    # the syscalls that are fcntl: the 32-bit targets' fcntl64 takes the same commands
    fcntl_calls: tuple[str, ...] = ("fcntl",)
    # 32-bit ARM: a block may be Thumb code, read with this capstone mode (cannoli_db/disasm.py decides)
    capstone_thumb: str | None = None
    delay_slot: bool = False      # MIPS: the instruction after a branch runs before its target
    # the kernel's CONFIG_CLONE_BACKWARDS: clone(flags, stack, ptid, tls, ctid) instead of (..., ctid, tls)
    clone_backwards: bool = True
    compiler_flags: tuple[str, ...] = ()  # for the cross compiler: the ABI QEMU's target runs

    # -- derived -------------------------------------------------------------------------

    @property
    def pointer_size(self) -> int:
        """Bytes of an address and of a syscall argument: each target's ABI here has its ELF class's."""
        return self.elf_class // 8

    @property
    def qemu_binary(self) -> str:
        return f"qemu-{self.qemu_target}"

    @property
    def compiler(self) -> str:
        return f"{self.triplet}-gcc"

    @property
    def sysroot(self) -> str:
        """Where Debian's cross packages put the target's libraries and dynamic loader (-L)."""
        return f"/usr/{self.triplet}"

    @property
    def word_mask(self) -> int:
        return (1 << (8 * self.pointer_size)) - 1

    @property
    def syscall_module(self) -> str:
        return f"{__package__}.syscall_tables.{self.name}"

    @property
    def syscall_names(self) -> dict[int, str]:
        """Syscall number -> name (cannoli_db/syscall_tables/<name>.py)."""
        return import_module(self.syscall_module).NAMES

    @property
    def abi(self):
        """The module of the target's kernel ABI constants (cannoli_db/syscall_tables/<name>_abi.py)."""
        return import_module(f"{self.syscall_module}_abi")

    @property
    def map_anonymous(self) -> int:
        return self.abi.MAP["MAP_ANONYMOUS"]

    @property
    def map_fixed(self) -> int:
        return self.abi.MAP["MAP_FIXED"]

    @property
    def fcntl_dupfd(self) -> tuple[int, ...]:
        """The fcntl commands that duplicate a descriptor: F_DUPFD, F_DUPFD_CLOEXEC."""
        return self.abi.FCNTL_CMDS["F_DUPFD"], self.abi.FCNTL_CMDS["F_DUPFD_CLOEXEC"]

    def capstone(self, thumb: bool = False) -> tuple[int, int]:
        """capstone's (arch, mode) for the target's code; thumb: for 32-bit ARM's Thumb blocks."""
        import capstone

        if thumb and self.capstone_thumb is None:
            raise ValueError(f"{self.name} has no Thumb mode")
        names = (self.capstone_thumb,) if thumb else self.capstone_mode
        mode = 0
        for name in names:
            mode |= getattr(capstone, name)
        return getattr(capstone, self.capstone_arch), mode


_TABLE = (
    Arch("x86_64", "x86_64", "EM_X86_64", 64, True, "x86_64-linux-gnu",
         "CS_ARCH_X86", ("CS_MODE_64",), pc_register="rip", sp_register="rsp", clone_backwards=False),
    Arch("aarch64", "aarch64", "EM_AARCH64", 64, True, "aarch64-linux-gnu",
         "CS_ARCH_ARM64", ("CS_MODE_ARM",), pc_register="pc", sp_register="sp"),
    # RVC: Debian's riscv64 code (rv64gc) mixes 2-byte compressed instructions in
    Arch("riscv64", "riscv64", "EM_RISCV", 64, True, "riscv64-linux-gnu",
         "CS_ARCH_RISCV", ("CS_MODE_RISCV64", "CS_MODE_RISCVC"), pc_register="pc", sp_register="sp"),
    Arch("arm", "arm", "EM_ARM", 32, True, "arm-linux-gnueabihf",
         "CS_ARCH_ARM", ("CS_MODE_ARM",), pc_register="pc", sp_register="sp",
         fcntl_calls=("fcntl", "fcntl64"), capstone_thumb="CS_MODE_THUMB"),
    Arch("mipsel", "mipsel", "EM_MIPS", 32, True, "mipsel-linux-gnu",
         "CS_ARCH_MIPS", ("CS_MODE_MIPS32", "CS_MODE_LITTLE_ENDIAN"), pc_register="pc", sp_register="r29",
         fcntl_calls=("fcntl", "fcntl64"), delay_slot=True, compiler_flags=("-mabi=32",)),
)
ARCHES: dict[str, Arch] = {a.name: a for a in _TABLE}
_BY_ELF = {(a.elf_machine, a.elf_class, a.little_endian): a for a in _TABLE}


def supported() -> str:
    return ", ".join(ARCHES)


def get(name: str) -> Arch:
    """The entry of an architecture by name (meta.json's `arch`)."""
    found = ARCHES.get(name) if isinstance(name, str) else None
    if found is None:
        raise CannoliError(f"unknown guest architecture {name!r}; Cannoli DB supports {supported()}")
    return found


def of_meta(meta: Mapping, where: str = "the trace") -> Arch:
    """The architecture a trace was recorded for: its meta's `arch` (the indexer writes it,
    from meta.json or, when that is damaged, from the recorded program's ELF header)."""
    name = meta.get("arch")
    if not name:
        raise CannoliError(f"{where} does not say which architecture it was recorded for (its meta has no "
                           f"`arch`); index it again: cannoli index {where}")
    return get(name)


def by_elf(machine: str, elf_class: int, little_endian: bool) -> Arch | None:
    """The entry for an ELF header's e_machine, class and byte order; None if Cannoli DB has none."""
    return _BY_ELF.get((machine, elf_class, little_endian))


def of_elf(elf) -> Arch | None:
    """The entry for an open pyelftools ELFFile; None if Cannoli DB has none."""
    return by_elf(elf["e_machine"], elf.elfclass, elf.little_endian)


def of_program(path: str) -> Arch | None:
    """The entry for the ELF program at `path`; None if it is not one (or unreadable)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            return of_elf(ELFFile(f))
    except (ELFError, OSError):
        return None
