"""The objects gdb reads with `qXfer:<object>:read` (GDB manual, "General Query
Packets" and "Library List Format for SVR4 Targets"), built from what the
trace knows and nothing more: the auxiliary vector has only the entries the
modules table and the ELF files give (never AT_RANDOM, AT_HWCAP, ...).
"""

from __future__ import annotations

from html import escape as xml_escape

from .history import Module

PAGE_SIZE = 4096  # QEMU user mode's target page on x86_64 and aarch64
AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_BASE, AT_ENTRY = 0, 3, 4, 5, 6, 7, 9


def auxv(executable: Module | None, interpreter: Module | None, word: int = 8) -> bytes:
    """The auxiliary vector as the kernel lays it out: (type, value) words, AT_NULL last."""
    entries = []
    if executable is not None and executable.entry is not None:
        if executable.phdr is not None:
            entries += [(AT_PHDR, executable.phdr), (AT_PHENT, executable.phent), (AT_PHNUM, executable.phnum)]
        entries.append((AT_ENTRY, executable.entry))
    entries.append((AT_PAGESZ, PAGE_SIZE))
    if interpreter is not None:
        entries.append((AT_BASE, interpreter.load_bias))
    entries.append((AT_NULL, 0))
    return b"".join(t.to_bytes(word, "little") + v.to_bytes(word, "little") for t, v in entries)


def libraries_svr4(modules: tuple[Module, ...]) -> str:
    """The shared objects (libraries and the interpreter) at their load addresses.  `lm`, the address
    of each one's link_map in the guest, is not recorded: it is 0."""
    rows = ['<library-list-svr4 version="1.0">']
    for m in modules:
        if m.kind == "executable":
            continue
        rows.append(f'<library name="{xml_escape(m.path)}" lm="0x0" l_addr="{m.load_bias:#x}" '
                    f'l_ld="{m.dynamic or 0:#x}" lmid="0x0"/>')
    rows.append("</library-list-svr4>")
    return "\n".join(rows) + "\n"


def window(data: bytes, offset: int, length: int) -> bytes:
    """A qXfer reply: 'm' + a part when more follows, 'l' + the last part."""
    part = data[offset: offset + length]
    return (b"m" if offset + length < len(data) else b"l") + part
