"""What re-execution reads from a trace: executions of blocks, their code, the
recorded entry registers (as changes, docs/schema.md `regs`), and memory
accesses -- window by window through the store's `parts` index (`Trace.store_rows`),
so memory stays bounded and a window reads only its row groups.

`Executions` walks the block executions of a position window in order and
keeps each thread's entry registers up to date from the `regs` changes; it is
used for consecutive windows (replay, Tenet export, the check), so the
registers before the first window are queried once, not per window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from ..disasm import BLOCK_CODE_SQL
from ..format import MAX_BLOCK_INSNS
from ..query.parts import tuples
from .emulator import Access, Code, Emulator



@dataclass
class Execution:
    idx: int          # position of the block's first instruction
    tid: int
    block_id: int
    icount: int       # instructions that ran
    full: bool        # it ran to the end of a block that is not a twin (nothing cut it short)
    code: Code
    entry: dict[str, int]   # recorded registers at entry (a copy)
    accesses: list[Access]


class Executions:
    def __init__(self, trace, emulator: Emulator, tid: int | None = None):
        self.trace = trace
        self.emulator = emulator
        self.tid = tid
        self.state: dict[int, dict[str, int]] | None = None   # tid -> registers at its latest block entry

    def window(self, lo: int, hi: int, covering: bool = True, entries: bool = True) -> Iterator[Execution]:
        """Executions in order of position: those with an instruction in [lo, hi) (covering), or
        those that start in [lo, hi).  entries=False: the caller has the entry registers (each
        Execution's entry is then empty)."""
        first = max(lo, MAX_BLOCK_INSNS) - MAX_BLOCK_INSNS if covering else lo
        blocks = self.trace.store_rows("exec", first, hi, ["idx", "tid", "block_id", "icount"], self.tid)
        rows = self.trace.sql_over({"exec_window": blocks}, """
            SELECT e.idx, e.tid, e.block_id, e.icount, e.icount = b.icount AND NOT b.is_twin
            FROM exec_window e JOIN blocks b USING (block_id)
            WHERE e.idx + e.icount > $lo
            ORDER BY e.idx""", {"lo": lo}).rows
        if not rows:
            return
        start = rows[0][0]
        if entries:
            self._start_state(rows)
        else:
            self.state = {}
        changes = self._changes(start, hi) if entries else {}
        accesses = self._accesses([r[0] for r in rows], max(r[0] + r[3] for r in rows))
        codes = self._codes({r[2] for r in rows})
        for idx, tid, block_id, icount, full in rows:
            state = self.state.setdefault(tid, {})
            state.update(changes.get(idx, {}))
            yield Execution(idx, tid, block_id, icount, bool(full), codes[block_id], dict(state),
                            accesses.get(idx, []))

    def _start_state(self, rows) -> None:
        """Each thread's registers at its first block entry of the first window: the
        block-entry query (queries/regs/registers_at.sql: a keyframe and the changes after it),
        which reads one ordering segment back, however long the trace."""
        if self.state is not None:
            return
        self.state = {}
        first = {}
        for idx, tid, *_ in rows:
            first.setdefault(tid, idx)
        for tid, idx in first.items():
            self.state[tid] = {r["reg"]: r["value"] for r in self.trace.query("registers_at", at=idx).dicts()
                               if r["reg"] != "pc"}

    def _changes(self, start: int, hi: int) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {}
        rows = self.trace.store_rows("regs", start, hi, ["idx", "reg", "value"], self.tid)
        for idx, reg, value in tuples(rows):
            out.setdefault(idx, {})[reg] = value
        return out

    def _accesses(self, starts: list[int], hi: int) -> dict[int, list[Access]]:
        """Accesses at positions [starts[0], hi) by the position of their block's first instruction.
        Each position belongs to one execution, the one with the greatest start at or before it
        (starts: sorted)."""
        out: dict[int, list[Access]] = {}
        k = 0
        for idx, addr, size, is_write, value in self.trace.accesses(starts[0], hi, self.tid):
            while k + 1 < len(starts) and starts[k + 1] <= idx:
                k += 1
            out.setdefault(starts[k], []).append(Access(idx - starts[k], addr, size, is_write, value))
        return out

    def _codes(self, block_ids: set[int]) -> dict[int, Code]:
        out = {bid: code for bid in block_ids if (code := self.emulator.cached(bid)) is not None}
        missing = sorted(block_ids - out.keys())
        if missing:
            for bid, pc, code, sizes in self.trace.sql(BLOCK_CODE_SQL, {"ids": missing}).rows:
                out[bid] = self.emulator.code(bid, pc, code, sizes)
        return out

    def next_entry(self, tid: int, after: int, end: int) -> tuple[int, int, dict[str, int]] | None:
        """(idx, pc, registers) of the thread's first block entry at a position >= after, looking in
        growing steps up to end; None if it has none."""
        step = 1 << 16
        lo = after
        while lo < end:
            hi = min(end, lo + step)
            rows = self.trace.sql("""SELECT idx, pc FROM exec WHERE tid = $t AND idx >= $lo AND idx < $hi
                                     ORDER BY idx LIMIT 1""", {"t": tid, "lo": lo, "hi": hi}).rows
            if rows:
                idx, pc = rows[0]
                state = dict(self.state.get(tid, {}))
                state.update(dict(self.trace.sql("SELECT reg, value FROM regs WHERE tid = $t AND idx = $i",
                                                 {"t": tid, "i": idx}).rows))
                return idx, pc, state
            lo, step = hi, step * 4
        return None
