"""The recording's totals, packet by packet as the recorder drains them:
executed instructions (exact), blocks, memory accesses, syscalls, threads.

Instructions are counted by the same rule the index uses for positions
(cannoli_db.positions): what the plugin's closed segments drew from the ring,
plus each thread's execs that no segment closed, corrected for blocks cut
short.  Only the side sections and the exec ids of those unclosed execs are
looked at; the memory sections are never decoded here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cannoli_db import format as F
from cannoli_db.decode import PacketView
from cannoli_db.positions import BlockTable, PositionPlan
from cannoli_db.syscall_pairs import SyscallPairs


@dataclass
class _OpenSyscall:
    seq: int = -1                       # packet of the thread's latest syscall event
    number: int | None = None           # a syscall entered and not returned from
    path: str | None = None


@dataclass
class StreamStats:
    arch: str                           # cannoli_db.arch name
    blocks_executed: int = 0
    mem_events: int = 0
    syscalls: int = 0
    events: int = 0
    packets: int = 0
    salvaged_packets: int = 0
    threads: set = field(default_factory=set)
    blocks: BlockTable = field(default_factory=BlockTable)
    _plan: PositionPlan | None = None
    _open: dict = field(default_factory=dict)
    _pairs: SyscallPairs = field(default_factory=SyscallPairs)  # key: the call's number
    _images: dict = field(default_factory=dict)  # pid -> the latest stream that began a program image

    def __post_init__(self):
        self._plan = PositionPlan(self.blocks, self.arch, keep_segments=False)

    def add(self, view: PacketView) -> None:
        h, counts = view.header, view.counts
        self.packets += 1
        flags = int(h["flags"])
        self.salvaged_packets += bool(flags & F.PACKET_SALVAGED)
        n_exec = counts[F.SEC_EXEC]
        self.blocks_executed += n_exec - int(bool(flags & F.PACKET_CONTINUES) and n_exec > 0)
        self.mem_events += view.n_mem
        events = view.section(F.SEC_EVENT)
        self.events += len(events)
        self.syscalls += int(np.count_nonzero(events["kind"] == F.EV_SYSCALL))
        if np.any(events["kind"] == F.EV_PROCESS):
            pid = int(h["pid"])
            self._images[pid] = max(self._images.get(pid, 0), view.stream)
        self.threads.add((int(h["pid"]), int(h["tid"])))
        self.blocks.add(view.section(F.SEC_BLOCK), view.section(F.SEC_INSN_SIZE), view.section(F.SEC_INSN_BYTES))
        self._plan.add(h, events, view.stream)
        self._plan.add_execs(view.stream, int(h["exec_first"]), view.section(F.SEC_EXEC))
        self._note_syscalls(view.stream, int(h["packet_seq"]), events, view.section(F.SEC_BLOB))

    def _note_syscalls(self, stream: int, seq: int, events: np.ndarray, blob: np.ndarray) -> None:
        state = self._open.setdefault(stream, _OpenSyscall())
        if seq < state.seq:
            return  # an older packet of the thread, drained late
        for ev in events[np.isin(events["kind"], (F.EV_SYSCALL, F.EV_SYSRET, F.EV_BLOB))]:
            state.seq = seq
            if ev["kind"] != F.EV_BLOB:
                self._pairs.feed(stream, ev[None], [int(np.int64(ev["v"][0]))])
                state.number = self._pairs.open.get(stream)
                state.path = None if ev["kind"] == F.EV_SYSCALL else state.path
            elif state.number is not None and state.path is None:
                off, length = int(ev["v"][1]), int(ev["v"][2])
                if off + length <= len(blob):
                    state.path = bytes(blob[off: off + length]).decode(errors="backslashreplace")

    def left_by_exec(self, exec_numbers: set[int]) -> list[dict]:
        """Threads whose last act was an exec that never returned and whose process
        has no later stream: it went on as another program that no QEMU of the
        recording ran (a QEMU that follows exec starts a new stream for it)."""
        out = []
        for stream, state in sorted(self._open.items()):
            log = self._plan.streams.get(stream)
            if state.number in exec_numbers and log is not None and self._images.get(log.pid, 0) < stream:
                out.append({"pid": log.pid, "tid": log.tid, "path": state.path})
        return sorted(out, key=lambda d: (d["pid"], d["tid"]))

    def instructions(self) -> tuple[int, int]:
        """(exact executed instructions, positions the closed segments drew)."""
        total = self._plan.finish()
        return total, self._plan.drawn
