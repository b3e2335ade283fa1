"""The check: re-execute every block of a position range and compare.

For a block that ran to its end, the re-executed end state is compared with
the same thread's next recorded block entry, register by register (only the
registers known at the end: an unknown register is counted as unknown, not
compared), and the emulated pc with the next block's pc.  A block that ends in
a syscall cannot be compared across it (the kernel sets the result and may
change other registers): it is re-executed up to the syscall instruction and
compared with the syscall's recorded number and arguments.  A block cut short
(fault, signal) is not compared.  Stores are compared with the recorded store
values throughout.

`run` splits the range into position ranges for worker processes and adds up
their counts; `save` / `load` keep the result in TRACE/registers-check.json,
which `cannoli info` shows.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import CannoliError
from .arches import arch
from .source import Executions

RESULT_NAME = "registers-check.json"
WINDOW = 1 << 16          # positions per query window
MIN_WORKER_RANGE = 1 << 15  # positions; below it a worker spends more time starting than checking
MAX_EXAMPLES = 20


@dataclass
class Result:
    range: tuple[int, int]
    blocks: int = 0                  # executions re-executed
    compared: int = 0                # compared with the next block entry
    syscall_blocks: int = 0          # compared with the syscall's recorded number and arguments
    cut_short: int = 0               # not compared: a fault or signal stopped them
    last_blocks: int = 0             # not compared: the thread's last block (no next entry)
    registers_compared: int = 0
    mismatches: dict[str, int] = field(default_factory=dict)     # register -> count ("pc", "memory" too)
    unknown_at_end: dict[str, int] = field(default_factory=dict)  # register -> blocks where it was unknown
    failed_instructions: dict[str, int] = field(default_factory=dict)  # mnemonic -> count (unicorn failed)
    unrecorded_loads: int = 0
    examples: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 1

    @property
    def total_mismatches(self) -> int:
        return sum(self.mismatches.values())

    def add(self, other: Result) -> None:
        for name in ("blocks", "compared", "syscall_blocks", "cut_short", "last_blocks", "registers_compared",
                     "unrecorded_loads"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("mismatches", "unknown_at_end", "failed_instructions"):
            setattr(self, name, dict(Counter(getattr(self, name)) + Counter(getattr(other, name))))
        self.examples = (self.examples + other.examples)[:MAX_EXAMPLES]

    def summary(self) -> str:
        by = ", ".join(f"{name} {count}" for name, count in sorted(self.mismatches.items(), key=lambda x: -x[1]))
        return (f"{self.blocks:,} blocks, {self.total_mismatches:,} mismatches"
                + (f" (by register: {by})" if by else "")
                + f"; {self.compared:,} compared with the next block entry, {self.syscall_blocks:,} up to their "
                  f"syscall, {self.cut_short:,} cut short; positions {self.range[0]}:{self.range[1]}")

    def timing(self) -> str:
        """How long the check took and how fast it went, e.g. "3.2 s, 41,000 blocks/s (2 workers)"."""
        rate = f"{self.blocks / self.seconds:,.0f} blocks/s" if self.seconds else ""
        return f"{self.seconds} s, {rate} ({self.workers} workers)"


class _Checker:
    def __init__(self, trace, lo: int, hi: int):
        from . import emulator_for

        self.trace = trace
        self.arch = arch(trace.meta.get("arch"))
        self.emulator = emulator_for(trace)
        self.source = Executions(trace, self.emulator)
        self.result = Result((lo, hi))
        self.lo, self.hi = lo, hi
        self.check_stores = bool(trace.meta.get("record_mem", True))
        self.mask = (1 << self.arch.word_bits) - 1
        self.pending: dict[int, tuple] = {}  # tid -> (execution, outcome) waiting for its next entry

    def run(self) -> Result:
        total = self.trace.end
        for lo in range(self.lo, self.hi, WINDOW):
            hi = min(self.hi, lo + WINDOW)
            syscalls = {r[0]: r[1:] for r in self.trace.sql(
                "SELECT idx, nr, arg0, arg1, arg2, arg3, arg4, arg5 FROM syscalls WHERE idx >= $lo AND idx < $hi "
                "+ 512", {"lo": lo, "hi": hi}).rows}
            for e in self.source.window(lo, hi, covering=False):
                self._block(e, syscalls)
        for tid, (e, out) in self.pending.items():
            following = self.source.next_entry(tid, self.hi, total)
            if following is None:
                self.result.last_blocks += 1
            else:
                self._compare(e, out, *following)
        return self.result

    def _block(self, e, syscalls) -> None:
        r = self.result
        r.blocks += 1
        last = e.idx + e.icount - 1
        pending = self.pending.pop(e.tid, None)
        if pending is not None:
            self._compare(*pending, e.idx, e.code.pc, e.entry)
        if not e.full:
            # the last instruction counted is the one that faulted (or was interrupted): it did not complete
            r.cut_short += 1
            out = self.emulator.run(e.code, e.entry, e.accesses, e.icount - 1, check_stores=self.check_stores)
            self._note(e, out)
            return
        if last in syscalls:
            out = self.emulator.run(e.code, e.entry, e.accesses, e.icount - 1, check_stores=self.check_stores)
            self._note(e, out)
            r.syscall_blocks += 1
            self._compare_syscall(e, out, syscalls[last])
            return
        out = self.emulator.run(e.code, e.entry, e.accesses, e.icount, check_stores=self.check_stores)
        self._note(e, out)
        self.pending[e.tid] = (e, out)

    def _note(self, e, out) -> None:
        r = self.result
        for n, _ in out.store_mismatches:
            self._mismatch(e, "memory", None, None, n)
        r.unrecorded_loads += len(out.unrecorded_loads)
        for n in out.failed:
            mnemonic = e.code.flows[n].mnemonic
            r.failed_instructions[mnemonic] = r.failed_instructions.get(mnemonic, 0) + 1

    def _compare(self, e, out, next_idx: int, next_pc: int, next_entry: dict[str, int]) -> None:
        r = self.result
        r.compared += 1
        for name in next_entry:
            if name not in out.registers:
                r.unknown_at_end[name] = r.unknown_at_end.get(name, 0) + 1
                continue
            r.registers_compared += 1
            if out.registers[name] != next_entry[name]:
                self._mismatch(e, name, next_entry[name], out.registers[name])
        if out.next_pc is None:
            r.unknown_at_end["pc"] = r.unknown_at_end.get("pc", 0) + 1
        elif out.next_pc != next_pc:
            self._mismatch(e, "pc", next_pc, out.next_pc)

    def _compare_syscall(self, e, out, call) -> None:
        r = self.result
        for name, recorded in zip(self.arch.syscall_regs, call):
            if name not in out.registers:
                r.unknown_at_end[name] = r.unknown_at_end.get(name, 0) + 1
                continue
            r.registers_compared += 1
            if out.registers[name] & self.mask != recorded & self.mask:
                self._mismatch(e, name, recorded, out.registers[name], e.icount - 1)

    def _mismatch(self, e, name: str, recorded, emulated, n: int | None = None) -> None:
        r = self.result
        r.mismatches[name] = r.mismatches.get(name, 0) + 1
        if len(r.examples) < MAX_EXAMPLES:
            n = e.icount if n is None else n
            r.examples.append({"block_idx": e.idx, "tid": e.tid, "pc": e.code.pc, "register": name,
                               "recorded": recorded, "emulated": emulated, "at_instruction": n})


def check_range(trace, lo: int, hi: int) -> Result:
    """Check the blocks that start in [lo, hi), in this process."""
    return _Checker(trace, lo, hi).run()


def _worker(path: str, lo: int, hi: int) -> Result:
    from ..query import Trace

    with Trace.open(path) as trace:
        return check_range(trace, lo, hi)


def _workers(workers: int) -> int:
    return max(1, workers or os.cpu_count() or 1)


def parts(lo: int, hi: int, workers: int = 0) -> int:
    """How many position ranges `run` splits [lo, hi) into."""
    return max(1, min(_workers(workers) * 4, (hi - lo) // MIN_WORKER_RANGE))


def run(trace, lo: int, hi: int, workers: int = 0, progress=None, keep: bool = False) -> Result:
    """Check [lo, hi) in worker processes (workers=0: one per core), over position ranges;
    progress(result so far) after each range; `keep`: save the result in the trace
    directory (RESULT_NAME), where `cannoli info` reads it."""
    reason = trace.meta.get("regs_unavailable")
    if reason:
        raise CannoliError(f"{trace.path} has no registers to check: {reason}")
    arch(trace.meta.get("arch"))
    workers = _workers(workers)
    count = parts(lo, hi, workers)
    bounds = [(lo + (hi - lo) * k // count, lo + (hi - lo) * (k + 1) // count) for k in range(count)]
    started = time.monotonic()
    total = Result((lo, hi), workers=min(workers, count))
    if count == 1 or workers == 1:
        for a, b in bounds:
            total.add(check_range(trace, a, b))
            if progress:
                progress(total)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, count), mp_context=context) as pool:
            for part in pool.map(_worker, [str(trace.path)] * count, *zip(*bounds)):
                total.add(part)
                if progress:
                    progress(total)
    total.seconds = round(time.monotonic() - started, 3)
    if keep:
        save(trace.path, total)
    return total


def as_dict(result: Result) -> dict:
    return asdict(result) | {"total_mismatches": result.total_mismatches,
                             "blocks_per_second": round(result.blocks / result.seconds) if result.seconds else None}


def rows(result: Result) -> list[tuple[str, int, int]]:
    """(register, mismatches, blocks where it was unknown at the end), worst first."""
    names = set(result.mismatches) | set(result.unknown_at_end)
    return sorted(((n, result.mismatches.get(n, 0), result.unknown_at_end.get(n, 0)) for n in names),
                  key=lambda r: (-r[1], -r[2], r[0]))


def save(trace_dir: Path, result: Result) -> None:
    data = as_dict(result) | {"index_mtime_ns": _index_mtime(trace_dir)}
    tmp = Path(trace_dir) / f".{RESULT_NAME}.tmp"
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, Path(trace_dir) / RESULT_NAME)


def load(trace_dir: Path) -> str | None:
    """The stored check as one line for `cannoli info`, or None if the trace was never checked."""
    path = Path(trace_dir) / RESULT_NAME
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text()[: 1 << 20])
        result = Result(tuple(data["range"]), **{k: data[k] for k in (
            "blocks", "compared", "syscall_blocks", "cut_short", "mismatches")})
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable ({RESULT_NAME}: {exc}); run: cannoli check-registers {trace_dir}"
    stale = "" if data.get("index_mtime_ns") == _index_mtime(trace_dir) else " (STALE: the index was rebuilt since)"
    return result.summary() + stale


def _index_mtime(trace_dir: Path) -> int | None:
    from ..tracedir import DB_NAME

    try:
        return (Path(trace_dir) / DB_NAME).stat().st_mtime_ns
    except OSError:
        return None
