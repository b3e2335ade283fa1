"""The history of one recorded process, as a debugger asks about it.

`History` is the only place the debugger reads the trace: every question the
gdb server asks (where a thread goes next, where a pc runs, who touches an
address, what memory and registers held, which files are loaded) is one
method here, with no protocol in it.  The methods are written on today's
public API (`Trace.sql` over `exec`, `block_insns`, the store's indexes,
`threads`, `modules`, `mmaps`; `Trace.memory_at`, `Trace.registers_at`) so
that another store can re-implement them one by one.

Positions are `idx` (docs/schema.md): 0 .. end - 1, one per instruction of
any thread.  "The state at position p" is the state before instruction p
runs: instructions < p have run.  Searches run over windows of positions
that grow geometrically from the starting point, so a hit nearby costs one
small query and a miss costs about one scan of the table.

Only the threads of one process are seen (the first process unless told
otherwise): a fork child's instructions share the position space but are
another program to gdb.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterable

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

import numpy as np

from .. import arch as guest_arch
from ..errors import CannoliError
from ..query import Trace, window
from ..format import MAX_BLOCK_INSNS
from ..symbols import host_path

FIRST_WINDOW = 1 << 14  # positions searched by the first query of a search
GROWTH = 8              # each further window is this many times larger
KINDS = ("write", "read", "any")


@dataclass(frozen=True)
class Thread:
    tid: int
    pid: int
    first: int    # position of its first instruction
    last: int     # position of its last instruction
    exited: bool  # its exit was recorded (otherwise it was alive when the recording ended)


@dataclass(frozen=True)
class Access:
    """One recorded memory access."""

    idx: int
    tid: int
    pc: int
    addr: int
    size: int
    is_write: bool


@dataclass(frozen=True)
class Segment:
    """A PT_LOAD segment at its load address."""

    start: int    # relocated p_vaddr
    memsz: int
    filesz: int   # bytes [start, start + filesz) come from the file at `offset`
    offset: int


@dataclass(frozen=True)
class Module:
    """An ELF image of the process at its recorded load address (the `modules` table), with the
    facts of its file that gdb needs, relocated."""

    path: str              # as the guest named it
    host_path: str         # where this machine reads it (the trace's sysroot applied)
    kind: str              # executable | interpreter | library
    start: int
    end: int
    load_bias: int
    loaded_at: int | None  # position of the mmap that mapped it; None: there from the start
    entry: int | None      # e_entry + bias, None if the file cannot be read
    phdr: int | None       # address of the program headers in memory
    phnum: int
    phent: int
    dynamic: int | None    # address of PT_DYNAMIC
    segments: tuple[Segment, ...]

    def loaded(self, idx: int) -> bool:
        """Mapped at position idx (its mmap has run)."""
        return self.loaded_at is None or self.loaded_at < idx


class History:
    """One program image of one process: the first process's first, or the one running at
    position `at`.  (A process that exec'd ran one image after another; gdb debugs one program.)"""

    def __init__(self, trace: Trace, pid: int | None = None, at: int | None = None):
        self.trace = trace
        self.end = trace.end
        self.arch = guest_arch.of_meta(trace.meta, trace.path).name
        rows = trace.sql("SELECT tid, pid, first_idx, last_idx, exited FROM threads "
                         "WHERE first_idx IS NOT NULL ORDER BY first_idx").rows
        if not rows:
            raise CannoliError(f"{trace.path} has no instructions to debug")
        start = next((r for r in rows if at is not None and r[2] <= at <= r[3]), rows[0])
        self.pid = start[1] if pid is None else pid
        self.image, until = self._image(start[2] if pid is None or pid == start[1] else 0)
        self._threads = {r[0]: Thread(*r) for r in rows if r[1] == self.pid and self.image <= r[2] < until}
        self.end = min(self.end, until)  # the image's history ends where the process exec'd the next
        if not self._threads:
            raise CannoliError(f"no process {pid} in {trace.path}; its processes are: "
                               f"{', '.join(sorted({str(r[1]) for r in rows}))}")
        # SQL that keeps this process's rows; empty when the trace holds no other process
        others = any(r[1] != self.pid for r in rows)
        self._own = f" AND tid IN ({', '.join(map(str, self._threads))})" if others else ""
        self._site_cache: dict[frozenset[int], tuple[list[int], list[int]]] = {}

    def _image(self, idx: int) -> tuple[int, int]:
        """[start, end) of the process's program image that holds position idx."""
        starts = sorted({r[0] for r in self.trace.sql("SELECT image_idx FROM modules WHERE pid = $p",
                                                       {"p": self.pid}).rows} | {0})
        image = max(s for s in starts if s <= idx)
        return image, min((s for s in starts if s > image), default=1 << 64)

    # -- threads and positions ----------------------------------------------

    def threads(self) -> tuple[Thread, ...]:
        """All threads of the process that ran an instruction, by first position."""
        return tuple(self._threads.values())

    def thread(self, tid: int) -> Thread | None:
        return self._threads.get(tid)

    def threads_at(self, idx: int) -> tuple[Thread, ...]:
        """Threads alive at position idx: started (first <= idx) and not yet past their recorded exit
        (idx <= last, or no exit was recorded)."""
        return tuple(t for t in self._threads.values() if t.first <= idx and (idx <= t.last or not t.exited))

    def instruction_at(self, idx: int) -> tuple[int, int] | None:
        """(tid, pc) of the instruction at position idx, or None outside 0 .. end - 1."""
        if not 0 <= idx < self.end:
            return None
        rows = self.trace.instructions(idx, idx + 1).rows
        return rows[0][1:3] if rows else None

    def next_in_thread(self, tid: int, at: int) -> int | None:
        """The first position >= at that thread tid runs, or None if it runs none (its last
        instruction is before at)."""
        t = self._threads.get(tid)
        if t is None or at > t.last:
            return None
        if at <= t.first:
            return t.first
        sql = """SELECT min(greatest(idx, $at::UBIGINT)) FROM exec
                 WHERE tid = $tid AND idx >= $lo AND idx < $hi AND idx + icount > $at::UBIGINT"""
        return self._forward(sql, {"tid": tid, "at": at}, max(at - MAX_BLOCK_INSNS + 1, 0), t.last + 1)

    def prev_in_thread(self, tid: int, before: int) -> int | None:
        """The last position < before that thread tid ran, or None if it ran none (its first
        instruction is at or after before)."""
        t = self._threads.get(tid)
        if t is None or before <= t.first:
            return None
        if before > t.last:
            return t.last
        sql = """SELECT max(least(idx + icount - 1, $before::UBIGINT - 1)) FROM exec
                 WHERE tid = $tid AND idx >= $lo AND idx < $hi"""
        return self._backward(sql, {"tid": tid, "before": before}, t.first, before)

    # -- breakpoints ---------------------------------------------------------

    def next_execution(self, pcs: Iterable[int], at: int, tid: int | None = None) -> int | None:
        """The first position >= at where an instruction at one of the addresses pcs runs (in thread
        tid, or any thread of the process), or None if none does before the end."""
        return self._execution(frozenset(pcs), at, True, tid)

    def prev_execution(self, pcs: Iterable[int], before: int, tid: int | None = None) -> int | None:
        """The last position < before where an instruction at one of the addresses pcs ran (in thread
        tid, or any thread of the process), or None if none did since position 0."""
        return self._execution(frozenset(pcs), before, False, tid)

    def _execution(self, pcs: frozenset[int], edge: int, forward: bool, tid: int | None) -> int | None:
        """Through the store's block index (exec_blocks): the packets that ran a block holding one of
        pcs, nearest first, read until none left can hold a nearer execution."""
        blocks, ns = self._sites(pcs)
        if not blocks:
            return None
        reach = MAX_BLOCK_INSNS - 1  # an execution starting up to this far before reaches a position
        where, order = ((f"idx_last + {reach} >= $edge", "idx_first") if forward else
                        ("idx_first < $edge", "idx_last DESC"))
        cands = self.trace.sql(f"""SELECT part, row_first, row_last, idx_first, idx_last FROM exec_blocks
                                   WHERE list_contains($blocks::UINTEGER[], block_id) AND {where}
                                   ORDER BY {order}""", {"blocks": blocks, "edge": edge}).rows
        offsets = {}
        for b, n in zip(blocks, ns):
            offsets.setdefault(b, []).append(n)
        tids = None if tid is None and not self._own else np.array(sorted({tid} if tid is not None else
                                                                            self._threads), np.uint32)
        best = None
        for k, (part, first, last, _, _) in enumerate(cands):
            t = self.trace.parts.rows("exec", part, first, last, ["idx", "tid", "block_id", "icount"])
            idx, thread, block, icount = (t[c].to_numpy() for c in ("idx", "tid", "block_id", "icount"))
            keep = np.isin(block, blocks) & (np.ones(len(idx), bool) if tids is None else np.isin(thread, tids))
            for i in np.flatnonzero(keep):
                for n in offsets[int(block[i])]:
                    pos = int(idx[i]) + n
                    if n < icount[i] and (pos >= edge if forward else pos < edge):
                        best = pos if best is None or (pos < best if forward else pos > best) else best
            if best is not None and k + 1 < len(cands):
                nxt = cands[k + 1]
                if (best < nxt[3]) if forward else (best > nxt[4] + reach):
                    break
        return best

    def _sites(self, pcs: frozenset[int]) -> tuple[list[int], list[int]]:
        """(block ids, instruction indexes) of every translated block that holds one of pcs."""
        if pcs not in self._site_cache:
            rows = self.trace.sql("SELECT block_id, n FROM block_insns WHERE list_contains($pcs::UBIGINT[], pc)",
                                  {"pcs": sorted(pcs)}).rows if pcs else []
            if len(self._site_cache) >= 256:
                self._site_cache.clear()
            self._site_cache[pcs] = ([r[0] for r in rows], [r[1] for r in rows])
        return self._site_cache[pcs]

    # -- watchpoints ---------------------------------------------------------

    def next_access(self, addr: int, size: int, kind: str, at: int, tid: int | None = None) -> Access | None:
        """The first recorded access at a position >= at that touches a byte of [addr, addr + size)
        and is of `kind` (write, read or any), or None.  Accesses of one instruction come in address
        order."""
        return self._access(addr, size, kind, int(at), True, tid)

    def prev_access(self, addr: int, size: int, kind: str, before: int, tid: int | None = None) -> Access | None:
        """The last recorded access at a position < before that touches [addr, addr + size) and is of
        `kind`, or None."""
        return self._access(addr, size, kind, int(before), False, tid)

    def _access(self, addr: int, size: int, kind: str, edge: int, forward: bool, tid: int | None) -> Access | None:
        if kind not in KINDS:
            raise ValueError(f"access kind {kind!r} is not one of {KINDS}")
        if not self.trace.meta.get("record_mem", True) or size < 1 or addr + size > 1 << 64:
            return None
        tids = {tid} if tid is not None else (set(self._threads) if self._own else None)
        find = window.first_after if forward else window.last_before
        row = find(self.trace._con, self.trace.parts, addr, addr + size - 1, edge, kind, tids)
        return None if row is None else Access(row["idx"], row["tid"], row["pc"], row["addr"], row["size"],
                                               row["is_write"])

    # -- state at a position --------------------------------------------------

    def memory_at(self, idx: int, addr: int, length: int) -> tuple[int | None, ...]:
        """Bytes [addr, addr + length) at position idx (0 <= idx <= end), None where unknown: from the
        latest recorded access before idx (Trace.memory_at), else, for a byte no access touched
        before idx, from the file of a loaded module that maps it (its code, read-only data and
        initial data, which nothing has written yet).  A kernel write the guest never read back
        (read(2) into a static buffer) is not seen."""
        try:
            values = list(self.trace.memory_at(idx, addr, length).values)
        except CannoliError:  # unmapped, or recorded with --no-mem
            values = [None] * length
        if None in values:
            for module in self.modules_at(idx):
                _fill_from_file(values, addr, module)
        return tuple(values)

    def registers_at(self, idx: int) -> dict[str, int]:
        """Registers before instruction idx runs, by gdb name, and "pc" (Trace.registers_at);
        registers the trace does not know are absent.  A trace without registers gives the pc only."""
        if self.trace.meta.get("regs_unavailable"):
            here = self.instruction_at(idx)
            return {} if here is None else {"pc": here[1]}
        try:
            return self.trace.registers_at(idx)
        except CannoliError:
            return {}

    # -- the program and its libraries ----------------------------------------

    @cached_property
    def modules(self) -> tuple[Module, ...]:
        """Every ELF image the process mapped (executable, interpreter, libraries), by address."""
        rows = self.trace.sql("""
            SELECT m.path, m.kind, m.start, m."end", m.load_bias,
                   (SELECT min(x.idx) FROM mmaps x WHERE x.pid = m.pid AND x.kind = 'mmap'
                                                    AND x.path = m.path AND x.start = m.start) AS loaded_at
            FROM modules m WHERE m.pid = $pid AND m.image_idx = $image ORDER BY m.start""",
            {"pid": self.pid, "image": self.image}).rows
        sysroot = self.trace.meta.get("sysroot")
        return tuple(_module(path, host_path(path, sysroot), kind, start, end, bias, loaded_at)
                     for path, kind, start, end, bias, loaded_at in rows)

    def modules_at(self, idx: int) -> tuple[Module, ...]:
        """The modules mapped at position idx."""
        return tuple(m for m in self.modules if m.loaded(idx))

    def module(self, kind: str) -> Module | None:
        """The executable or the interpreter (kind), if the trace knows it."""
        return next((m for m in self.modules if m.kind == kind), None)

    @property
    def end_signal(self) -> str | None:
        """The name of the signal that killed the process at the end of the recording (SIGSEGV, ...),
        or None if it exited, or the recording stopped otherwise."""
        name = self.trace.meta.get("exit_signal_name")
        first = min(t.first for t in self._threads.values())
        return name if isinstance(name, str) and first == 0 else None

    # -- search helpers -------------------------------------------------------

    def _forward(self, sql: str, params: dict, lo: int, stop: int) -> int | None:
        """Run sql (an aggregate over exec rows with idx in [$lo, $hi)) on growing windows from lo up to
        stop; the first non-NULL answer."""
        width = FIRST_WINDOW
        while lo < stop:
            hi = min(lo + width, stop)
            (found,) = self.trace.sql(sql, {**params, "lo": lo, "hi": hi}).rows[0]
            if found is not None:
                return found
            lo, width = hi, width * GROWTH
        return None

    def _backward(self, sql: str, params: dict, floor: int, hi: int) -> int | None:
        """As _forward, with windows going down from hi to floor."""
        width = FIRST_WINDOW
        while hi > floor:
            lo = max(hi - width, floor)
            (found,) = self.trace.sql(sql, {**params, "lo": lo, "hi": hi}).rows[0]
            if found is not None:
                return found
            hi, width = lo, width * GROWTH
        return None

    def _thread_filter(self, tid: int | None, prefix: str = "") -> str:
        if tid is not None:
            return f" AND {prefix}tid = $tid"
        return self._own.replace(" tid", f" {prefix}tid")

    @staticmethod
    def _tid_param(tid: int | None) -> dict:
        return {} if tid is None else {"tid": tid}


def _module(path, host_path, kind, start, end, bias, loaded_at) -> Module:
    entry = phdr = dynamic = None
    phnum = phent = 0
    segments = []
    try:
        with open(host_path, "rb") as f:
            elf = ELFFile(f)
            entry, phnum, phent = elf["e_entry"] + bias, elf["e_phnum"], elf["e_phentsize"]
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_LOAD":
                    segments.append(Segment(seg["p_vaddr"] + bias, seg["p_memsz"], seg["p_filesz"], seg["p_offset"]))
                    if seg["p_offset"] <= elf["e_phoff"] < seg["p_offset"] + seg["p_filesz"] and phdr is None:
                        phdr = seg["p_vaddr"] + bias + elf["e_phoff"] - seg["p_offset"]
                elif seg["p_type"] == "PT_PHDR":
                    phdr = seg["p_vaddr"] + bias
                elif seg["p_type"] == "PT_DYNAMIC":
                    dynamic = seg["p_vaddr"] + bias
    except (OSError, ELFError, ValueError):
        pass
    return Module(path, host_path, kind, start, end, bias, loaded_at, entry, phdr, phnum, phent, dynamic,
                  tuple(segments))


def _fill_from_file(values: list, addr: int, module: Module) -> None:
    """Fill the None bytes of values (memory from addr) that module's file provides."""
    end = addr + len(values)
    for seg in module.segments:
        lo, hi = max(addr, seg.start), min(end, seg.start + seg.filesz)
        if lo >= hi or all(v is not None for v in values[lo - addr: hi - addr]):
            continue
        try:
            with open(module.host_path, "rb") as f:
                f.seek(seg.offset + lo - seg.start)
                data = f.read(hi - lo)
        except OSError:
            return
        for k, byte in enumerate(data):
            if values[lo - addr + k] is None:
                values[lo - addr + k] = byte
