"""Totals over a stream of packets: executed instructions (exact), blocks,
memory accesses, syscalls, threads.  The recorder feeds it each packet's view
(header, blocks, events -- the memory sections are never decoded here) and an
executed-block histogram counted in C while packing, so the summary needs no
second pass over the chunks.

Executed instructions = sum over executed blocks of the block's instruction
count, corrected for blocks that stopped early whose exec entry had already
left the lane (PARTIAL events), and for each thread's last block when the
thread stopped inside it (packet header cur_done = 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import format as F
from .decode import PacketView
from .fault_point import died_at


@dataclass
class _ThreadTail:
    last_seq: int = -1
    cur_done: bool = True
    cur_accessed: int = 0
    exec_seq: int = -1
    last_exec_id: int = 0
    open_syscall: int | None = None     # number of a syscall entered and not returned from
    open_syscall_path: str | None = None
    open_seq: int = -1


@dataclass
class StreamStats:
    blocks_executed: int = 0
    mem_events: int = 0
    syscalls: int = 0
    events: int = 0
    packets: int = 0
    salvaged_packets: int = 0
    threads: set = field(default_factory=set)
    _icount: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    _base: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    _partial_twins: list = field(default_factory=list)
    _tails: dict = field(default_factory=dict)
    _block_rows: list = field(default_factory=list)  # section copies, for a dying thread's last block

    def add(self, buf, view: PacketView) -> None:
        h = view.header
        self.packets += 1
        self.salvaged_packets += bool(int(h["flags"]) & F.PACKET_SALVAGED)
        n_exec = view.counts[F.SEC_EXEC]
        self.blocks_executed += n_exec
        self.mem_events += view.counts[F.SEC_MEM_ADDR]
        events = view.section(buf, F.SEC_EVENT)
        self.events += len(events)
        self.syscalls += int(np.count_nonzero(events["kind"] == F.EV_SYSCALL))
        thread = (int(h["pid"]), int(h["tid"]))
        self.threads.add(thread)
        blocks = view.section(buf, F.SEC_BLOCK)
        if len(blocks):
            ids = blocks["block_id"].astype(np.int64)
            self._grow(int(ids.max()) + 1)
            self._icount[ids] = blocks["n_insns"]
            self._base[ids] = blocks["base_id"]
            self._block_rows.append((blocks.copy(), view.section(buf, F.SEC_INSN_SIZE).copy(),
                                     view.section(buf, F.SEC_INSN_BYTES).copy()))
        partial = events[events["kind"] == F.EV_PARTIAL]
        self._partial_twins.extend(int(x) for x in partial["v"][:, 1])
        last_exec = int(view.section(buf, F.SEC_EXEC)[-1]) if n_exec else None
        self._note_tail(thread, h, last_exec)
        self._note_syscalls(thread, int(h["packet_seq"]), events, view.section(buf, F.SEC_BLOB))

    def _grow(self, n: int) -> None:
        if n > len(self._icount):
            self._icount = np.pad(self._icount, (0, n - len(self._icount)))
            self._base = np.pad(self._base, (0, n - len(self._base)))

    def _note_tail(self, thread, h, last_exec: int | None) -> None:
        tail = self._tails.setdefault(thread, _ThreadTail())
        seq = int(h["packet_seq"])
        if seq > tail.last_seq:
            tail.last_seq = seq
            tail.cur_done, tail.cur_accessed = bool(h["cur_done"]), int(h["cur_accessed"])
        if last_exec is not None and seq > tail.exec_seq:
            tail.exec_seq, tail.last_exec_id = seq, last_exec

    def _note_syscalls(self, thread, seq: int, events: np.ndarray, blob: np.ndarray) -> None:
        tail = self._tails[thread]
        if seq < tail.open_seq:
            return  # an older packet of the thread, drained late
        calls = events[np.isin(events["kind"], (F.EV_SYSCALL, F.EV_SYSRET, F.EV_BLOB))]
        for ev in calls:
            tail.open_seq = seq
            if ev["kind"] == F.EV_SYSCALL:
                tail.open_syscall, tail.open_syscall_path = int(np.int64(ev["v"][0])), None
            elif ev["kind"] == F.EV_SYSRET:
                tail.open_syscall = None
            elif tail.open_syscall is not None and tail.open_syscall_path is None:
                off, length = int(ev["v"][1]), int(ev["v"][2])
                if off + length <= len(blob):
                    tail.open_syscall_path = bytes(blob[off: off + length]).decode(errors="backslashreplace")

    def left_by_exec(self, exec_numbers: set[int]) -> list[dict]:
        """Threads whose last act was an exec that never returned: the process went
        on as another program, which QEMU user mode does not run."""
        return [{"pid": pid, "tid": tid, "path": tail.open_syscall_path}
                for (pid, tid), tail in sorted(self._tails.items())
                if tail.open_syscall in exec_numbers]

    def instructions(self, exec_hist: np.ndarray, arch: str) -> int:
        """Exact executed instructions, given the count of executions per block id."""
        n = len(exec_hist)
        self._grow(n)
        total = int(np.dot(exec_hist.astype(np.int64), self._icount[:n]))
        for twin in self._partial_twins:
            if twin < len(self._icount):
                total -= int(self._icount[self._base[twin]] - self._icount[twin])
        for tail in self._tails.values():
            if not tail.cur_done and tail.exec_seq >= 0 and tail.last_exec_id < len(self._icount):
                full = int(self._icount[tail.last_exec_id])
                total -= full - died_at(self._block_rows, arch, tail.last_exec_id, tail.cur_accessed, full)
        return total
