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


class _Space:
    """The symbols and modules of one address space (or of all of them), sorted for lookups."""

    def __init__(self, symbols: list[tuple], modules: list[tuple]):
        # one name per address: a FUNC over an OBJECT, a sized symbol, the shortest public name
        best: dict[int, tuple] = {}
        for addr, size, name, kind in symbols:
            key = (kind != "FUNC", size == 0, name.startswith("_"), len(name), name)
            if addr not in best or key < best[addr][0]:
                best[addr] = (key, size, name)
        addrs = sorted(best)
        self.addr = np.array(addrs, np.uint64)
        self.end = np.array([a + (best[a][1] or _UNSIZED_REACH) for a in addrs], np.uint64)
        self.names = [best[a][2] for a in addrs]
        modules = sorted(modules)
        self.mod_start = np.array([m[0] for m in modules], np.uint64)
        self.mod_end = np.array([m[1] for m in modules], np.uint64)
        self.mod_path = [m[2] for m in modules]
        self.mod_name = [os.path.basename(m[2]) for m in modules]
        self.mod_bias = [m[4] for m in modules]


class Symbolizer:
    """Names and source lines for addresses, from one trace's symbols and modules;
    `sysroot` is the trace's (meta.sysroot), where its guest paths are on this host.

    A trace whose processes exec'd holds several address spaces that may reuse
    addresses (two PIE programs at QEMU's base): a lookup may name its space,
    `space(tid, idx)`, and then sees only that process image's modules."""

    def __init__(self, con, sysroot: str | None = None):
        self._symbols = con.execute("SELECT pid, module, addr, size, name, kind FROM symbols").fetchall()
        self._modules = con.execute('SELECT pid, image_idx, start, "end", path, kind, load_bias FROM modules').fetchall()
        self._threads = con.execute("SELECT tid, pid, first_idx, last_idx FROM threads ORDER BY first_idx").fetchall()
        self._by_name: dict[str, list[tuple[int, str]]] = {}
        for _, module, addr, _, name, _ in self._symbols:
            if (addr, module) not in self._by_name.setdefault(name, []):
                self._by_name[name].append((addr, module))
        self._executables = {m[4] for m in self._modules if m[5] == "executable"}
        self._images = any(m[1] for m in self._modules)  # some process exec'd
        self._spaces: dict = {}
        self._sysroot = sysroot
        self._lines = SourceLines()
        self._line_files: dict[str, str] = {}  # guest path -> the ELF file whose DWARF gives its lines

    def space(self, tid: int, idx: int):
        """The address space thread tid ran in at position idx: (pid, image), or None
        when the trace has one image per process (names are then the same everywhere)."""
        if not self._images:
            return None
        rows = [r for r in self._threads if r[0] == tid and r[2] is not None and r[2] <= idx] or \
               [r for r in self._threads if r[0] == tid]
        if not rows:
            return None
        pid = rows[-1][1]
        images = [m[1] for m in self._modules if m[0] == pid and m[1] <= idx]
        return pid, max(images, default=0)

    def _space(self, key) -> _Space:
        if key not in self._spaces:
            if key is None:
                mods = [(m[2], m[3], m[4], m[5], m[6]) for m in self._modules]
                syms = [(s[2], s[3], s[4], s[5]) for s in self._symbols]
            else:
                pid, image = key
                mods = [(m[2], m[3], m[4], m[5], m[6]) for m in self._modules if m[0] == pid and m[1] == image]
                inside = {(m[2], m[0], m[1]) for m in mods}
                syms = [(s[2], s[3], s[4], s[5]) for s in self._symbols
                        if s[0] == pid and any(p == s[1] and lo <= s[2] < hi for p, lo, hi in inside)]
            self._spaces[key] = _Space(syms, mods)
        return self._spaces[key]

    def name(self, pc: int | None, space=None) -> str:
        if pc is None:
            return ""
        return self.names(np.array([pc], np.uint64), space)[0]

    def names(self, pcs: np.ndarray, space=None) -> list[str]:
        """`symbol+0xoff` (or `module+0xoff`, or hex) for each pc (of one space, see space())."""
        s = self._space(space)
        pcs = np.asarray(pcs, np.uint64)
        out = [hex(int(pc)) for pc in pcs]
        if len(s.addr):
            i = np.searchsorted(s.addr, pcs, side="right") - 1
            hit = (i >= 0) & (pcs < s.end[np.maximum(i, 0)])
            for k in np.flatnonzero(hit):
                off = int(pcs[k] - s.addr[i[k]])
                out[k] = s.names[i[k]] + (f"+{off:#x}" if off else "")
        else:
            hit = np.zeros(len(pcs), bool)
        if len(s.mod_start):
            j = np.searchsorted(s.mod_start, pcs, side="right") - 1
            in_mod = ~hit & (j >= 0) & (pcs < s.mod_end[np.maximum(j, 0)])
            for k in np.flatnonzero(in_mod):
                out[k] = f"{s.mod_name[j[k]]}+{int(pcs[k] - s.mod_start[j[k]]):#x}"
        return out

    def line(self, pc: int | None, space=None) -> tuple[str, int] | None:
        """(source file, line) of a pc where the module's DWARF says, else None."""
        return None if pc is None else self.lines(np.array([pc], np.uint64), space)[0]

    def lines(self, pcs, space=None) -> list[tuple[str, int] | None]:
        """(source file, line) or None for each pc; file names as gdb's `info line` shows them."""
        s = self._space(space)
        pcs = np.asarray(pcs, np.uint64)
        out: list[tuple[str, int] | None] = [None] * len(pcs)
        if not len(s.mod_start) or not len(pcs):
            return out
        j = np.searchsorted(s.mod_start, pcs, side="right") - 1
        inside = (j >= 0) & (pcs < s.mod_end[np.maximum(j, 0)])
        for k in np.flatnonzero(inside):
            address = int(pcs[k]) - s.mod_bias[j[k]]
            if address >= 0:
                out[k] = self._lines.line(self._line_file(s.mod_path[j[k]]), address)
        return out

    def locations(self, pcs, space=None) -> list[str | None]:
        """`file:line` or None for each pc."""
        return [None if where is None else f"{where[0]}:{where[1]}" for where in self.lines(pcs, space)]

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
