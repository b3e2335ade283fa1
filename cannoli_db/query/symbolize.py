"""Addresses and names: `symbol+offset` and `file:line` for a pc, and an address
for `symbol+offset`.

Names use the trace's `symbols` and `modules` tables (the symbols of each
module and of its separate debug file, relocated to their load addresses at
index time).  Lookups of many pcs are vectorised with numpy's searchsorted over
the symbols sorted by address.  Source lines come from the DWARF of each
module's files on disk (cannoli_db.symbols: the debug file gdb would load, else
the module itself), read on first use.
"""

from __future__ import annotations

import os
import re

import numpy as np
from elftools.common.exceptions import DWARFError, ELFError
from elftools.elf.elffile import ELFFile

from ..errors import CannoliError
from ..symbols import SourceLines, find_debug_file, host_path

_ADDRESS = re.compile(r"^(?:(?P<module>[^!\s]+)!)?(?P<name>[A-Za-z_.$@][\w.$@]*)\s*(?:(?P<sign>[+-])\s*(?P<offset>\w+))?$")
# a symbol with no size is taken to cover at most this many bytes after it
_UNSIZED_REACH = 0x1000


def parse_number(text: str) -> int | None:
    try:
        value = int(text.replace("_", ""), 0)
    except ValueError:
        return None
    return value if 0 <= value < 1 << 64 else None


class Symbolizer:
    """Names and source lines for addresses, from one trace's symbols and modules;
    `sysroot` is the trace's (meta.sysroot), where its guest paths are on this host."""

    def __init__(self, con, sysroot: str | None = None):
        rows = con.execute("""
            SELECT addr, size, name, module FROM symbols
            QUALIFY row_number() OVER (PARTITION BY addr ORDER BY kind = 'FUNC' DESC, size > 0 DESC,
                                       starts_with(name, '_'), length(name), name) = 1
            ORDER BY addr""").fetchall()
        self._addr = np.array([r[0] for r in rows], np.uint64)
        self._end = np.array([r[0] + (r[1] if r[1] else _UNSIZED_REACH) for r in rows], np.uint64)
        self._names = [r[2] for r in rows]
        self._by_name: dict[str, list[tuple[int, str]]] = {}
        for addr, _, name, module in con.execute("SELECT DISTINCT addr, size, name, module FROM symbols").fetchall():
            self._by_name.setdefault(name, []).append((addr, module))
        modules = con.execute("SELECT start, \"end\", path, kind, load_bias FROM modules ORDER BY start").fetchall()
        self._mod_start = np.array([m[0] for m in modules], np.uint64)
        self._mod_end = np.array([m[1] for m in modules], np.uint64)
        self._mod_name = [os.path.basename(m[2]) for m in modules]
        self._mod_path = [m[2] for m in modules]
        self._mod_bias = [m[4] for m in modules]
        self._executables = {m[2] for m in modules if m[3] == "executable"}
        self._sysroot = sysroot
        self._lines = SourceLines()
        self._line_files: dict[str, str] = {}  # guest path -> the ELF file whose DWARF gives its lines

    def name(self, pc: int | None) -> str:
        if pc is None:
            return ""
        return self.names(np.array([pc], np.uint64))[0]

    def names(self, pcs: np.ndarray) -> list[str]:
        """`symbol+0xoff` (or `module+0xoff`, or hex) for each pc."""
        pcs = np.asarray(pcs, np.uint64)
        out = [hex(int(pc)) for pc in pcs]
        if len(self._addr):
            i = np.searchsorted(self._addr, pcs, side="right") - 1
            hit = (i >= 0) & (pcs < self._end[np.maximum(i, 0)])
            for k in np.flatnonzero(hit):
                off = int(pcs[k] - self._addr[i[k]])
                out[k] = self._names[i[k]] + (f"+{off:#x}" if off else "")
        else:
            hit = np.zeros(len(pcs), bool)
        if len(self._mod_start):
            j = np.searchsorted(self._mod_start, pcs, side="right") - 1
            in_mod = ~hit & (j >= 0) & (pcs < self._mod_end[np.maximum(j, 0)])
            for k in np.flatnonzero(in_mod):
                out[k] = f"{self._mod_name[j[k]]}+{int(pcs[k] - self._mod_start[j[k]]):#x}"
        return out

    def line(self, pc: int | None) -> tuple[str, int] | None:
        """(source file, line) of a pc where the module's DWARF says, else None."""
        return None if pc is None else self.lines(np.array([pc], np.uint64))[0]

    def lines(self, pcs) -> list[tuple[str, int] | None]:
        """(source file, line) or None for each pc; file names as gdb's `info line` shows them."""
        pcs = np.asarray(pcs, np.uint64)
        out: list[tuple[str, int] | None] = [None] * len(pcs)
        if not len(self._mod_start) or not len(pcs):
            return out
        j = np.searchsorted(self._mod_start, pcs, side="right") - 1
        inside = (j >= 0) & (pcs < self._mod_end[np.maximum(j, 0)])
        for k in np.flatnonzero(inside):
            address = int(pcs[k]) - self._mod_bias[j[k]]
            if address >= 0:
                out[k] = self._lines.line(self._line_file(self._mod_path[j[k]]), address)
        return out

    def locations(self, pcs) -> list[str | None]:
        """`file:line` or None for each pc."""
        return [None if where is None else f"{where[0]}:{where[1]}" for where in self.lines(pcs)]

    def _line_file(self, module: str) -> str:
        if module not in self._line_files:
            path = host_path(module, self._sysroot)
            debug = find_debug_file(path, self._sysroot)
            self._line_files[module] = debug if debug and self._lines.has_lines(debug) else path
        return self._line_files[module]

    def address(self, text: str) -> int:
        """The address that `text` names: hex, decimal, or `[module!]symbol[+offset]`."""
        text = text.strip()
        number = parse_number(text)
        if number is not None:
            return number
        match = _ADDRESS.match(text)
        if not match:
            raise CannoliError(f"{text!r} is not an address: write hex (0x4010a0), decimal, or symbol+offset")
        offset = 0
        if match["offset"]:
            offset = parse_number(match["offset"])
            if offset is None:
                raise CannoliError(f"bad offset in {text!r}: write symbol+0x10 or symbol+16")
            offset = -offset if match["sign"] == "-" else offset
        return self._symbol_address(match["name"], match["module"], text) + offset

    def _symbol_address(self, name: str, module: str | None, text: str) -> int:
        candidates = self._by_name.get(name, [])
        if module:
            candidates = [(a, m) for a, m in candidates if os.path.basename(m) == module or m == module]
        addrs = {a for a, _ in candidates}
        if not addrs:
            raise CannoliError(f"unknown symbol {text!r}; find names with: "
                               f"cannoli sql TRACE \"SELECT name, module FROM symbols WHERE name LIKE '%{name}%'\"")
        if len(addrs) > 1:
            in_exe = {a for a, m in candidates if m in self._executables}
            if len(in_exe) == 1:
                return in_exe.pop()
            where = sorted({os.path.basename(m) for _, m in candidates})
            raise CannoliError(f"symbol {name!r} is in several modules ({', '.join(where)}); "
                               f"name one, e.g. {where[0]}!{name}")
        return addrs.pop()
