"""Exact registers at every instruction, by re-executing recorded blocks.

The recording has the registers at the entry of every block (QEMU >= 9,
docs/format.md §4a).  To know them at instruction n of a block, the block's
recorded bytes run in unicorn from its recorded entry registers, with every
load answered by the recorded value of that access, up to instruction n
(emulator.py).  Registers the recording lacks and everything computed from
them are unknown and left out, never guessed (dataflow.py); the
per-architecture facts are in arches.py.

    registers_at(trace, idx)         # {"rax": ..., "pc": ...} before instruction idx runs
    RegisterChanges(trace, tid)      # per-instruction changes, window by window (replay, Tenet)
    check.run(trace, lo, hi)         # re-execute every block, compare with the next entry

One emulator per architecture and process is kept (`emulator_for`).
"""

from __future__ import annotations

import weakref

from .. import arch as guest_arch
from ..errors import CannoliError
from .arches import arch
from .emulator import Access, Emulator
from .source import Executions

# one per open trace: an emulator keeps decoded blocks by the trace's block ids,
# which another trace numbers differently
_EMULATORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def emulator_for(trace) -> Emulator:
    emulator = _EMULATORS.get(trace)
    if emulator is None:
        emulator = _EMULATORS[trace] = Emulator(arch(guest_arch.of_meta(trace.meta, trace.path).name))
    return emulator


def registers_at(trace, idx: int) -> dict[str, int]:
    """The registers of the thread at position idx before instruction idx runs, and "pc": the recorded
    entry registers of its block (the named query registers_at) carried through the instructions of
    the block before idx.  Registers that are unknown there are absent."""
    rows = trace.query("registers_at", at=idx).dicts()
    if not rows:
        raise CannoliError(f"no instruction ran at position {idx}")
    entry = {r["reg"]: r["value"] for r in rows if r["reg"] != "pc"}
    pc = next(r["value"] for r in rows if r["reg"] == "pc")
    start, tid = rows[0]["block_start"], rows[0]["tid"]
    if idx == start:
        return {**entry, "pc": pc}
    emulator = emulator_for(trace)
    source = Executions(trace, emulator, tid)
    (execution,) = [e for e in source.window(start, start + 1, covering=False, entries=False) if e.idx == start]
    out = emulator.run(execution.code, entry, execution.accesses, idx - start, check_stores=False)
    return {**out.registers, "pc": pc}


class RegisterChanges:
    """Register changes at each instruction of consecutive position windows (of one thread, or all):
    {idx: ((name, value), ...)}, the registers known before instruction idx whose value differs from
    the one before the thread's previous instruction, or that were not known there.  The first
    instruction of each thread shows every known register.  Call `window` for increasing,
    non-overlapping windows."""

    def __init__(self, trace, tid: int | None = None):
        self.enabled = not trace.meta.get("regs_unavailable")  # QEMU 7.2 - 8.2: no registers at all
        self.emulator = emulator_for(trace) if self.enabled else None
        self.source = Executions(trace, self.emulator, tid)
        self.previous: dict[int, dict[str, int]] = {}  # tid -> known registers before its latest instruction

    def window(self, lo: int, hi: int) -> dict[int, tuple[tuple[str, int], ...]]:
        out: dict[int, tuple[tuple[str, int], ...]] = {}
        if not self.enabled:
            return out
        for e in self.source.window(lo, hi):
            stop = min(e.icount, hi - e.idx)
            run = self.emulator.run(e.code, e.entry, e.accesses, stop, trace=True, check_stores=False)
            order = self.emulator.slot
            previous = self.previous.get(e.tid)
            for n, regs in enumerate([*run.states, run.registers][:stop]):
                if e.idx + n >= lo:
                    changed = regs.items() - (previous.items() if previous is not None else ())
                    if changed:
                        out[e.idx + n] = tuple(sorted(changed, key=lambda item: order[item[0]]))
                    previous = regs
            if previous is not None:
                self.previous[e.tid] = previous
        return out


__all__ = ["Access", "Emulator", "RegisterChanges", "emulator_for", "registers_at"]
