"""Replay: the recorded execution, one instruction at a time.

Each Step is one position: thread, pc, `symbol+offset`, its source
`file:line` where the module's DWARF has one, the instruction as
capstone reads the recorded bytes, the memory accesses it made (with values),
the syscall it entered, and (QEMU >= 9 traces) the registers before it ran:
all known ones at a thread's first step, then the ones that changed, at every
instruction (cannoli_db.reexec re-executes each block from its recorded entry
registers; unknown registers are left out).  Steps are produced window by window
(the first small, then up to WINDOW positions at a time) so a replay of any length runs in bounded memory.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import ClassVar, Iterator

import numpy as np

from . import arch as guest_arch
from .disasm import BLOCK_CODE_SQL, Disassembler
from .errors import CannoliError
from .hex_columns import INFO as HEX
from .reexec import RegisterChanges

WINDOW = 1 << 16
FIRST_WINDOW = 1 << 8


@dataclass(frozen=True)
class Access:
    addr: int
    size: int
    is_write: bool
    value: int | None


@dataclass(frozen=True)
class Syscall:
    nr: int
    name: str | None
    args: tuple[int, ...]
    ret: int | None  # None: it never returned
    call: str  # as strace prints it: rendered once, at index time (syscall_render.py)

    def render(self) -> str:
        return self.call


@dataclass(frozen=True)
class Step:
    COLUMNS: ClassVar = ("idx", "tid", "pc", "symbol", "insn", "bytes", "mem", "syscall", "regs", "line")

    idx: int
    tid: int
    pc: int = field(metadata=HEX)
    symbol: str
    insn: str
    bytes: bytes
    mem: tuple[Access, ...] = field(default=())
    syscall: Syscall | None = None
    regs: tuple[tuple[str, int], ...] = field(default=())  # (name, value) that changed before this step
    line: str | None = None  # source file:line of pc, where the module's DWARF says

    def row(self) -> tuple:
        """The step as a row of COLUMNS, in JSON's types (bytes as hex, accesses as objects)."""
        return (self.idx, self.tid, self.pc, self.symbol, self.insn, self.bytes.hex(),
                [{"addr": a.addr, "size": a.size, "write": a.is_write, "value": a.value} for a in self.mem],
                None if self.syscall is None else {
                    "nr": self.syscall.nr, "name": self.syscall.name, "args": list(self.syscall.args),
                    "ret": self.syscall.ret, "call": self.syscall.call},
                dict(self.regs), self.line)

    def as_dict(self) -> dict:
        return dict(zip(self.COLUMNS, self.row()))

    def text(self) -> str:
        accesses = " ".join(
            f"{'W' if a.is_write else 'R'}[{a.addr:#x}]={'?' if a.value is None else hex(a.value)}" for a in self.mem)
        line = f"{self.idx:>10} {self.tid:>7} {self.pc:#014x} {self.symbol:<32} {self.insn:<40} {accesses}".rstrip()
        if self.line:
            line += f"  ; {posixpath.basename(self.line)}"
        if self.regs:
            line += f"\n{'':>19}regs " + " ".join(f"{name}={value:#x}" for name, value in self.regs)
        if self.syscall is not None:
            line += f"\n{'':>19}syscall {self.syscall.render()}"
        return line


def parse_range(trace, text: str) -> tuple[int, int]:
    """START:END (END exclusive); either side may be empty (trace start / end), a
    position, or an address or symbol, which means its first execution; START may
    be -N, the last N positions; END may be +N, N positions after START (cut at the
    end of the trace)."""
    total = trace.end
    parts = text.split(":")
    if len(parts) != 2:
        raise CannoliError(f"--range {text!r}: write START:END, e.g. 1000:2000, main:, or :500")
    before = parts[0].strip()
    if before.startswith("-") and before[1:].isdigit():
        start = max(0, total - int(before[1:]))
    else:
        start = _bound(trace, before, 0)
    after = parts[1].strip()
    if after.startswith("+") and after[1:].isdigit():
        end = min(total, start + int(after[1:]))
    else:
        end = _bound(trace, after, total)
    if start >= total or end > total:
        raise CannoliError(f"--range {text!r} is outside the trace (positions 0 .. {total - 1}); "
                           f"see: cannoli info {trace.path}")
    if start > end:
        raise CannoliError(f"--range {text!r} is inverted: {start} comes after {end}")
    return start, end


def _bound(trace, text: str, default: int) -> int:
    text = text.strip()
    if not text:
        return default
    if text.isdigit():
        return int(text)
    pc = trace.address(text)
    first = first_execution(trace, pc)
    if first is None:
        raise CannoliError(f"{text} ({pc:#x}) never ran in this trace")
    return first


def first_execution(trace, pc: int) -> int | None:
    return trace.sql("SELECT min(idx) FROM insns WHERE pc = $pc", {"pc": pc}).rows[0][0]


def check_range(trace, start: int, end: int, tid: int | None) -> None:
    total = trace.end
    if start > end:
        raise CannoliError(f"range {start}:{end} is inverted")
    if start < 0 or start >= total or end > total:
        raise CannoliError(f"range {start}:{end} is outside the trace (positions 0 .. {total - 1})")
    if tid is not None and not trace.sql("SELECT count(*) FROM threads WHERE tid = $t", {"t": tid}).rows[0][0]:
        known = ", ".join(str(r[0]) for r in trace.sql("SELECT tid FROM threads ORDER BY tid").rows)
        raise CannoliError(f"no thread {tid} in this trace; its threads are: {known}")


def steps(trace, start: int, end: int, tid: int | None = None) -> Iterator[Step]:
    """The steps of positions [start, end), checked first (errors come before any step)."""
    check_range(trace, start, end, tid)
    return _steps(trace, Disassembler(guest_arch.of_meta(trace.meta, trace.path).name), start, end, tid)


def _steps(trace, disasm: Disassembler, start: int, end: int, tid: int | None) -> Iterator[Step]:
    changes = RegisterChanges(trace, tid)
    lo, size = start, FIRST_WINDOW
    while lo < end:
        hi = min(end, lo + size)
        yield from _window(trace, disasm, changes, lo, hi, tid)
        # the first step comes after a small window; later windows grow to WINDOW
        lo, size = hi, min(WINDOW, size * 4)


def _window(trace, disasm: Disassembler, changes: RegisterChanges, lo: int, hi: int,
            tid: int | None) -> Iterator[Step]:
    params = {"lo": lo, "hi": hi, "tid": tid}
    insns = trace.instructions(lo, hi, tid).rows
    if not insns:
        return
    mem = _by_idx(trace.accesses(lo, hi, tid))
    calls = {r[0]: Syscall(r[1], r[2], tuple(r[3:9]), r[9], r[10]) for r in trace.sql("""
        SELECT idx, nr, name, arg0, arg1, arg2, arg3, arg4, arg5, ret, call FROM syscalls
        WHERE idx >= $lo AND idx < $hi AND ($tid IS NULL OR tid = $tid)""", params).rows}
    regs = changes.window(lo, hi)
    texts, codes = _block_texts(trace, disasm, {r[3] for r in insns})
    names = _names(trace.symbolizer, insns)
    for (idx, thread, pc, block_id, n) in insns:
        name, line = names[(trace.symbolizer.space(thread, idx), pc)]
        yield Step(idx, thread, pc, name, texts[block_id][n], codes[block_id][n],
                   mem.get(idx, ()), calls.get(idx), regs.get(idx, ()), line)


def _names(sym, insns) -> dict:
    """{(space, pc): (name, line)} for the window's instructions, one lookup per space."""
    by_space: dict = {}
    for idx, thread, pc, _, _ in insns:
        by_space.setdefault(sym.space(thread, idx), set()).add(pc)
    out = {}
    for space, pcs in by_space.items():
        pcs = sorted(pcs)
        for pc, name, line in zip(pcs, sym.names(pcs, space), sym.locations(pcs, space)):
            out[(space, pc)] = (name, line)
    return out


def _by_idx(rows) -> dict[int, tuple[Access, ...]]:
    out: dict[int, list[Access]] = {}
    for idx, addr, size, is_write, value in rows:
        out.setdefault(idx, []).append(Access(addr, size, is_write, value))
    return {k: tuple(v) for k, v in out.items()}


def _block_texts(trace, disasm: Disassembler, block_ids: set[int]):
    rows = trace.sql(BLOCK_CODE_SQL, {"ids": sorted(block_ids)}).rows
    texts, codes = {}, {}
    for block_id, pc, code, sizes in rows:
        texts[block_id] = disasm.block(block_id, pc, code, sizes)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        codes[block_id] = [bytes(code[offsets[i]: offsets[i + 1]]) for i in range(len(sizes))]
    return texts, codes
