"""A module's FUNC and OBJECT symbols: its own `.symtab` and `.dynsym`, merged
with the `.symtab` of its separate debug file (debug_files.py), which names
the static functions a stripped distribution library hides (libc's
`__memmove_avx_unaligned_erms`)."""

from __future__ import annotations

from .debug_files import ELF_ERRORS, find_debug_file, open_elf

SYMBOL_SECTIONS = (".symtab", ".dynsym")


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
                for sym in section.iter_symbols():
                    kind = sym["st_info"]["type"]
                    if kind in ("STT_FUNC", "STT_OBJECT") and sym["st_value"] and sym.name:
                        value = sym["st_value"] & ~thumb_bit if kind == "STT_FUNC" else sym["st_value"]
                        out[(sym.name, value)] = (sym.name, value, sym["st_size"],
                                                  "FUNC" if kind == "STT_FUNC" else "OBJECT")
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
