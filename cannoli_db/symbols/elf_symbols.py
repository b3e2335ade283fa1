"""A module's FUNC and OBJECT symbols: its own `.symtab` and `.dynsym`, merged
with the `.symtab` of its separate debug file (debug_files.py), which names
the static functions a stripped distribution library hides (libc's
`__memmove_avx_unaligned_erms`)."""

from __future__ import annotations

import numpy as np
from elftools.elf.enums import ENUM_ST_INFO_TYPE

from .debug_files import ELF_ERRORS, find_debug_file, open_elf

SYMBOL_SECTIONS = (".symtab", ".dynsym")
_FUNC, _OBJECT = ENUM_ST_INFO_TYPE["STT_FUNC"], ENUM_ST_INFO_TYPE["STT_OBJECT"]


def _sym_dtype(elfclass: int, little: bool) -> np.dtype:
    """Elf32_Sym / Elf64_Sym (the ELF specification's layouts)."""
    e = "<" if little else ">"
    if elfclass == 64:
        fields = [("name", e + "u4"), ("info", "u1"), ("other", "u1"), ("shndx", e + "u2"),
                  ("value", e + "u8"), ("size", e + "u8")]
    else:
        fields = [("name", e + "u4"), ("value", e + "u4"), ("size", e + "u4"), ("info", "u1"),
                  ("other", "u1"), ("shndx", e + "u2")]
    return np.dtype(fields)


def _section_symbols(elf, section, thumb_bit: int, out: dict) -> None:
    # a symbol table is an array of fixed-size records: read it as one (a
    # debug libc has ~10^4 symbols; pyelftools parses them one by one)
    dtype = _sym_dtype(elf.elfclass, elf.little_endian)
    data = section.data()
    syms = np.frombuffer(data, dtype, len(data) // dtype.itemsize)
    kind = syms["info"] & 0xF
    keep = ((kind == _FUNC) | (kind == _OBJECT)) & (syms["value"] != 0) & (syms["name"] != 0)
    strtab = elf.get_section(section["sh_link"]).data()
    for off, value, size, k in zip(*(syms[f][keep].tolist() for f in ("name", "value", "size")), kind[keep].tolist()):
        end = strtab.find(b"\0", off)
        if off >= len(strtab) or end == off:
            continue
        name = strtab[off: end if end >= 0 else len(strtab)].decode("utf-8", "replace")
        value = value & ~thumb_bit if k == _FUNC else value
        out[(name, value)] = (name, value, size, "FUNC" if k == _FUNC else "OBJECT")


def elf_symbols(path: str) -> list[tuple[str, int, int, str]]:
    """(name, value, size, kind) of the FUNC and OBJECT symbols of one ELF file,
    each (name, value) once; [] if the file is missing or damaged."""
    out = {}
    try:
        with open(path, "rb") as f:
            elf = open_elf(f)
            # an ARM FUNC symbol's bit 0 marks Thumb code; the code starts at the even address
            thumb_bit = 1 if elf["e_machine"] == "EM_ARM" else 0
            for name in SYMBOL_SECTIONS:
                section = elf.get_section_by_name(name)
                if section is None or section["sh_type"] == "SHT_NOBITS":
                    continue  # a debug file keeps .dynsym's header, not its contents
                _section_symbols(elf, section, thumb_bit, out)
    except ELF_ERRORS:
        return []
    return list(out.values())


def module_symbols(path: str, sysroot: str | None = None, debug_file: str | None = None):
    """The symbols of the module at host path `path` and of its debug file (found
    as gdb finds it unless given), each (name, value) once, unrelocated."""
    debug_file = debug_file or find_debug_file(path, sysroot)
    merged = {(s[0], s[1]): s for s in elf_symbols(path)}
    if debug_file:
        for s in elf_symbols(debug_file):
            merged.setdefault((s[0], s[1]), s)
    return list(merged.values())
