"""cannoli_db/arch.py, checked against sources that do not read it: the C
library headers of each target's compiler (tests/guests/arch_facts.c prints
what they say, run under the table's qemu-<target>), the ELF files the
compilers produce (read by pyelftools), the compilers' own objdump (where each
instruction of `main` starts, which capstone must find in the table's mode),
the installed QEMU, and the sysroot the dynamic loader is in."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from itertools import takewhile

import capstone
import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_E_MACHINE

from cannoli_db import arch as guest_arch
from cannoli_db.recorder import guest_binary
from cannoli_db.errors import CannoliError
from cannoli_db.index import calls
from cannoli_db.reexec import arches as reexec_arches
from cannoli_db.native import qemu_build

from .conftest import CROSS, GUEST_ENV, HOST_ARCH

NAMES = sorted(guest_arch.ARCHES)


@pytest.fixture(scope="module")
def build(guest, cross_guest):
    def get(name: str, program: str, static: bool = True):
        return guest(program, static) if name == HOST_ARCH else cross_guest(name, program, static)

    return get


def facts(build, name: str) -> dict[str, int]:
    """What the target's C library headers say (tests/guests/arch_facts.c), run under qemu-<target>."""
    qemu = shutil.which(guest_arch.get(name).qemu_binary)
    proc = subprocess.run([qemu, str(build(name, "arch_facts"))], env=GUEST_ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {key: int(value) for key, value in re.findall(r"^(\w+)=(\d+)$", proc.stdout, re.M)}


@pytest.mark.parametrize("name", NAMES)
def test_constants_match_the_c_library_headers(build, name):
    a, said = guest_arch.get(name), facts(build, name)
    assert a.map_anonymous == said["MAP_ANONYMOUS"] and a.map_fixed == said["MAP_FIXED"]
    assert a.fcntl_dupfd == (said["F_DUPFD"], said["F_DUPFD_CLOEXEC"])
    assert a.pointer_size == said["pointer_size"] == a.abi.WORD_SIZE
    assert a.word_mask == (1 << (8 * said["pointer_size"])) - 1
    # the syscalls that are fcntl: every one of fcntl and fcntl64 the target's headers define
    assert set(a.fcntl_calls) == {n for n in ("fcntl", "fcntl64") if f"SYS_{n}" in said}
    for key, nr in said.items():
        if key.startswith("SYS_"):
            assert a.syscall_names[nr] == key[len("SYS_"):], key


def test_mips_is_the_target_whose_map_anonymous_differs():
    # the reason the table exists: 0x800 on MIPS, 0x20 elsewhere (also checked against the headers above)
    assert {n for n in NAMES if guest_arch.get(n).map_anonymous != guest_arch.get("x86_64").map_anonymous} == \
        {"mipsel"}


@pytest.mark.parametrize("name", NAMES)
def test_elf_header_of_the_compilers_output(build, name):
    a = guest_arch.get(name)
    program = build(name, "arch_facts")
    with open(program, "rb") as f:
        elf = ELFFile(f)
        machine, elf_class, little = elf["e_machine"], elf.elfclass, elf.little_endian
    assert machine in ENUM_E_MACHINE  # pyelftools' own name of the number in the file
    assert (machine, elf_class, little) == (a.elf_machine, a.elf_class, a.little_endian)
    assert guest_arch.by_elf(machine, elf_class, little) is a
    assert guest_binary.inspect(str(program)).arch == name
    if name in CROSS:
        assert CROSS[name] == a.triplet and shutil.which(a.compiler)


def _objdump_main(a: guest_arch.Arch, program) -> list[tuple[int, str]]:
    """(address, mnemonic) of each instruction of main, as the target's binutils read it."""
    tool = "objdump" if a.name == HOST_ARCH else f"{a.triplet}-objdump"
    out = subprocess.run([tool, "-d", "--insn-width=16", "--disassemble=main", str(program)], capture_output=True,
                         text=True, check=True).stdout
    return [(int(addr, 16), mnemonic) for addr, mnemonic in re.findall(r"^\s*([0-9a-f]+):\t[^\t]+\t(\S+)", out, re.M)]


@pytest.mark.parametrize("name", NAMES)
def test_capstone_mode_reads_main_as_binutils_does(build, name):
    a = guest_arch.get(name)
    program = build(name, "arch_facts")
    with open(program, "rb") as f:
        elf = ELFFile(f)
        (main,) = [s for s in elf.get_section_by_name(".symtab").iter_symbols() if s.name == "main"]
        text = elf.get_section_by_name(".text")
        data, base = text.data(), text["sh_addr"]
    thumb = a.capstone_thumb is not None and bool(main["st_value"] & 1)  # the ELF marks Thumb functions
    start = main["st_value"] & ~1 if thumb else main["st_value"]
    theirs = _objdump_main(a, program)
    code = list(takewhile(lambda insn: not insn[1].startswith("."), theirs))  # up to a literal pool (.word)
    end = theirs[len(code)][0] if len(code) < len(theirs) else start + main["st_size"]
    assert code and code[0][0] == start
    cs = capstone.Cs(*a.capstone(thumb))
    ours = [insn.address for insn in cs.disasm(data[start - base: end - base], start)]
    assert ours == [addr for addr, _ in code]
    if name == "arm":
        assert thumb  # Debian's armhf code is Thumb-2: the table's Thumb mode is the one used
    if name == "riscv64":
        assert any(later - addr == 2 for (addr, _), (later, _) in zip(code, code[1:]))  # compressed (RVC)


@pytest.mark.parametrize("name", NAMES)
def test_qemu_target_is_installed_and_known_to_qemu(name):
    a = guest_arch.get(name)
    assert a.qemu_target in qemu_build.LINUX_USER_TARGETS
    path = shutil.which(a.qemu_binary)
    assert path, f"{a.qemu_binary} is not on PATH"
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    assert "version 7.2" in version


@pytest.mark.parametrize("name", sorted(CROSS))
def test_sysroot_holds_the_dynamic_loader(build, name):
    a = guest_arch.get(name)
    with open(build(name, "arch_facts", static=False), "rb") as f:
        (interp,) = [s.get_interp_name() for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_INTERP"]
    assert os.path.exists(a.sysroot + interp)


def test_every_per_architecture_table_has_the_same_architectures():
    assert set(reexec_arches.ARCHES) == set(calls._RULES) == set(guest_arch.ARCHES)
    assert all(reexec_arches.ARCHES[n].guest is guest_arch.get(n) for n in NAMES)


@pytest.mark.parametrize("bad", ["i386", "ppc64le", "", None, "X86_64"])
def test_unknown_architecture_is_a_clear_error(bad):
    with pytest.raises(CannoliError) as err:
        guest_arch.get(bad)
    assert "\n" not in str(err.value) and "mipsel" in str(err.value)


def test_a_trace_without_arch_says_what_to_do():
    with pytest.raises(CannoliError) as err:
        guest_arch.of_meta({"program_path": "/bin/true"}, "app.cannoli")
    assert "app.cannoli" in str(err.value) and "cannoli index app.cannoli" in str(err.value)
    assert guest_arch.of_meta({"arch": "riscv64"}) is guest_arch.get("riscv64")
