"""Source file and line of an address, from DWARF line programs (`.debug_line`,
DWARF 2-5), read with pyelftools.

Finding a line never decodes more than one compilation unit: the unit that
holds an address comes from `.debug_aranges` (or, in a file without it, from
the address ranges of each unit's top DIE, read once), and only that unit's
line program is decoded, into numpy arrays kept in a cache bounded by rows.
Parsed DWARF files are bounded too (pyelftools holds their debug sections
in memory).  Addresses here are the ELF file's own (unrelocated).

The rows are the ones gdb records and picks (`_recorded`, `_sequence_rows`):
`cannoli` and gdb name the same line for a pc.  A sequence that starts at
address 0 (or -1, -2) is ignored, as gdb ignores it: it is the remains of a
function the linker discarded.  File names are as gdb's
`info line` prints them (the directory entry joined with the name).
"""

from __future__ import annotations

import posixpath
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .debug_files import ELF_ERRORS, open_elf

MAX_CACHED_ROWS = 1 << 21  # line rows kept decoded, over all units of all files (~40 MB)
MAX_PARSED_FILES = 8  # each holds its debug sections in memory (libc6-dbg's libc: ~50 MB)


@dataclass(frozen=True)
class UnitLines:
    """One compilation unit's line table: rows [addr, end) -> (file, line), sorted by addr."""

    addr: np.ndarray
    end: np.ndarray
    file: np.ndarray
    line: np.ndarray
    names: tuple[str | None, ...]  # by file number

    def find(self, address: int) -> tuple[str, int] | None:
        i = int(np.searchsorted(self.addr, np.uint64(address), side="right")) - 1
        if i < 0 or address >= int(self.end[i]):
            return None
        number = int(self.file[i])
        name = self.names[number] if 0 <= number < len(self.names) else None
        return None if name is None else (name, int(self.line[i]))


class DwarfFile:
    """The line information of one ELF file: which unit covers an address, and its table.
    pyelftools copies the debug sections into memory, so the file is closed at once."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            elf = open_elf(f)
            self.dwarf = elf.get_dwarf_info(follow_links=False) if elf.has_dwarf_info() else None
        self.begin, self.end, self.unit = _unit_ranges(self.dwarf) if self.dwarf else (_EMPTY, _EMPTY, _EMPTY)

    def unit_at(self, address: int) -> int | None:
        """The .debug_info offset of the unit whose ranges hold `address`."""
        i = int(np.searchsorted(self.begin, np.uint64(address), side="right")) - 1
        return int(self.unit[i]) if i >= 0 and address < int(self.end[i]) else None

    def unit_lines(self, offset: int) -> UnitLines | None:
        cu = self.dwarf.get_CU_at(offset)
        program = self.dwarf.line_program_for_CU(cu)
        return None if program is None else _decode(program)


_EMPTY = np.zeros(0, np.uint64)


def _unit_ranges(dwarf) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    aranges = dwarf.get_aranges()
    if aranges is not None:
        rows = [(e.begin_addr, e.begin_addr + e.length, e.info_offset) for e in aranges.entries if e.length]
    else:
        rows = [(lo, hi, cu.cu_offset) for cu in dwarf.iter_CUs() for lo, hi in _top_die_ranges(dwarf, cu)]
    rows = sorted(r for r in rows if r[0] < r[1] < 1 << 64)  # a damaged range must not wrap
    table = np.array(rows, np.uint64).reshape(-1, 3)
    return table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy()


def _top_die_ranges(dwarf, cu) -> list[tuple[int, int]]:
    """[low, high) ranges of a unit's top DIE: DW_AT_low_pc/high_pc or DW_AT_ranges
    (a section offset; a DWARF 5 rnglistx index is not followed)."""
    die = cu.get_top_DIE()
    attrs = die.attributes
    low = _address(dwarf, cu, attrs.get("DW_AT_low_pc"))
    if "DW_AT_ranges" in attrs:
        ranges_attr = attrs["DW_AT_ranges"]
        lists = dwarf.range_lists()
        if lists is None or ranges_attr.form == "DW_FORM_rnglistx":
            return []
        base, out = low or 0, []
        for entry in lists.get_range_list_at_offset(ranges_attr.value, cu=cu):
            if hasattr(entry, "base_address"):
                base = entry.base_address
            elif entry.is_absolute:
                out.append((entry.begin_offset, entry.end_offset))
            else:
                out.append((base + entry.begin_offset, base + entry.end_offset))
        return [(lo, hi) for lo, hi in out if lo < hi]
    high_attr = attrs.get("DW_AT_high_pc")
    if low is None or high_attr is None:
        return []
    high = _address(dwarf, cu, high_attr) if high_attr.form.startswith("DW_FORM_addr") else low + high_attr.value
    return [(low, high)] if low < high else []


def _address(dwarf, cu, attr) -> int | None:
    if attr is None:
        return None
    if attr.form.startswith("DW_FORM_addrx"):
        return dwarf.get_addr(cu, attr.value)
    return attr.value


def _decode(program) -> UnitLines:
    rows = []
    sequence: list = []
    for entry in program.get_entries():
        state = entry.state
        if state is None:
            continue
        if not state.end_sequence:
            sequence.append(state)
            continue
        if sequence and sequence[0].address not in _DISCARDED:
            rows.extend(_sequence_rows(_recorded(sequence), state.address))
        sequence = []
    rows.sort(key=lambda r: r[0])
    start, end, file, line = (np.array(column, dtype) for column, dtype in
                              zip(zip(*rows) if rows else ((), (), (), ()), (np.uint64, np.uint64, np.int64, np.int64)))
    return UnitLines(start, end, file, line, _file_names(program))


# a sequence set to one of these addresses is a function the linker discarded
_DISCARDED = (0, (1 << 64) - 1, (1 << 64) - 2, (1 << 32) - 1, (1 << 32) - 2)


def _recorded(sequence: list) -> list:
    """The rows of one sequence that gdb's line reader records (lnp_state_machine::
    record_line): not line 0; not a non-statement row that switches file at an
    address that already has a statement; and a row repeating the previous
    recorded line of the same file merges into it when that line carried a
    non-zero discriminator (gdb PR 17276)."""
    out = []
    last_file = last_line = last_address = None
    stmt_at_address = discriminated = False
    previous = None
    for s in sequence:
        if previous is None or s.line != previous.line or s.file != previous.file:
            discriminated = s.discriminator != 0
        else:
            discriminated |= s.discriminator != 0
        file_changed = s.file != last_file
        ignored = s.line == 0 or (file_changed and s.address == last_address and not s.is_stmt and stmt_at_address)
        if not ignored and (file_changed or s.line != last_line or not discriminated):
            out.append(s)
            last_file, last_line = s.file, s.line
        if s.address != last_address:
            stmt_at_address, last_address = False, s.address
        stmt_at_address |= bool(s.is_stmt)
        previous = s
    return out


def _sequence_rows(recorded: list, end_address: int) -> list[tuple[int, int, int, int]]:
    """(start, end, file, line) ranges: each address held by one row up to the next
    address.  Of the rows at one address, only the last file's count (a file switch
    ends the other file's rows there), and of those the last statement row, else
    the last row (gdb's find_pc_sect_line)."""
    out = []
    i = 0
    while i < len(recorded):
        j = i
        while j + 1 < len(recorded) and recorded[j + 1].address == recorded[i].address:
            j += 1
        end = recorded[j + 1].address if j + 1 < len(recorded) else end_address
        run = j
        while run > i and recorded[run - 1].file == recorded[j].file:
            run -= 1
        best = next((r for r in reversed(recorded[run : j + 1]) if r.is_stmt), recorded[j])
        if end > best.address:
            out.append((best.address, end, best.file, best.line))
        i = j + 1
    return out


def _file_names(program) -> tuple[str | None, ...]:
    """Each file number's name as gdb shows it: the file's directory entry joined
    with its name (a relative directory stays relative to the compilation
    directory, as gdb's `info line` prints it).  DWARF 5 numbers files and
    directories from 0, directory 0 being the compilation directory; earlier
    versions number both from 1 and directory 0 means the compilation directory."""
    header = program.header
    first = 0 if header["version"] >= 5 else 1
    dirs = [_text(d) for d in header["include_directory"]]
    names: list[str | None] = [None] * first
    for entry in header["file_entry"]:
        name, k = _text(entry["name"]), entry["dir_index"] - first
        if name.startswith("/") or k == -1:
            names.append(name)
        else:
            names.append(posixpath.join(dirs[k], name) if 0 <= k < len(dirs) else None)
    return tuple(names)


def _text(value) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


class SourceLines:
    """Line lookups over many ELF files, with bounded caches of parsed files and decoded units."""

    def __init__(self, max_rows: int = MAX_CACHED_ROWS, max_files: int = MAX_PARSED_FILES):
        self.max_rows, self.max_files = max_rows, max_files
        self._files: OrderedDict[str, DwarfFile | None] = OrderedDict()
        self._units: OrderedDict[tuple[str, int], UnitLines | None] = OrderedDict()
        self._rows = 0

    def line(self, path: str, address: int) -> tuple[str, int] | None:
        """(file, line) of `address` (unrelocated) in the DWARF of the ELF file at `path`."""
        dwarf = self._file(path)
        unit = dwarf.unit_at(address) if dwarf else None
        if unit is None:
            return None
        table = self._unit(dwarf, unit)
        return table.find(address) if table else None

    def has_lines(self, path: str) -> bool:
        dwarf = self._file(path)
        return dwarf is not None and len(dwarf.begin) > 0

    def _file(self, path: str) -> DwarfFile | None:
        if path in self._files:
            self._files.move_to_end(path)
            return self._files[path]
        try:
            dwarf = DwarfFile(path)
        except ELF_ERRORS:
            dwarf = None
        self._files[path] = dwarf
        while sum(1 for d in self._files.values() if d) > self.max_files:
            self._files.popitem(last=False)
        return dwarf

    def _unit(self, dwarf: DwarfFile, offset: int) -> UnitLines | None:
        key = (dwarf.path, offset)
        if key in self._units:
            self._units.move_to_end(key)
            return self._units[key]
        try:
            table = dwarf.unit_lines(offset)
        except ELF_ERRORS:
            table = None
        self._units[key] = table
        self._rows += len(table.addr) if table else 0
        while self._rows > self.max_rows and len(self._units) > 1:
            _, old = self._units.popitem(last=False)
            self._rows -= len(old.addr) if old else 0
        return table
