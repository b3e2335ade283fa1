"""Global instruction positions (idx) and exact instruction counts: the one
place that turns a recording's streams into positions.  The recorder's summary
(`counts.instructions`) and the index both call it.

The plugin draws positions itself (format version 3): when a thread closes an
ordering segment it takes that segment's instructions from the ring's
`next_idx` counter, and the SEGMENT event carries the first position and the
count.  So the closed segments of all threads tile [0, next_idx) and a
packet's execs get their positions from its own header and the segments of
its stream:

    idx(exec) = segment.first_idx + (instructions of the segment before it)

where a packet's first exec is preceded by `seg_insns` (packet header) of its
segment and every later exec by the execs before it in the packet.  What no
SEGMENT closed -- the last execs of threads that QEMU stopped, killed or that
died of a signal -- is placed after every closed segment, thread by thread.

Exact counts: an exec counts its block's instructions, corrected by PARTIAL
events (a block cut short after its exec left the lane) and, for a thread's
last block when the thread stopped inside it, by the fault point
(fault_point.died_at).  Closed segments need no correction: the plugin counted
them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import format as F
from .native.fault_point import died_at

Stream = int


@dataclass
class BlockTable:
    """Everything about translated blocks, indexed by block id."""

    icount: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    pc: np.ndarray = field(default_factory=lambda: np.zeros(1, np.uint64))
    base_id: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    known: np.ndarray = field(default_factory=lambda: np.zeros(1, bool))
    rows: list = field(default_factory=list)  # (blocks, insn_size, insn_bytes) per packet

    def add(self, blocks: np.ndarray, insn_size: np.ndarray, insn_bytes: np.ndarray) -> None:
        if not len(blocks):
            return
        ids = blocks["block_id"].astype(np.int64)
        self._grow(int(ids.max()) + 1)
        self.icount[ids] = blocks["n_insns"]
        self.pc[ids] = blocks["pc"]
        self.base_id[ids] = blocks["base_id"]
        self.known[ids] = True
        self.rows.append((blocks.copy(), insn_size.copy(), insn_bytes.copy()))

    def _grow(self, n: int) -> None:
        if n > len(self.icount):
            grow = max(n, 2 * len(self.icount)) - len(self.icount)
            self.icount = np.pad(self.icount, (0, grow))
            self.pc = np.pad(self.pc, (0, grow))
            self.base_id = np.pad(self.base_id, (0, grow))
            self.known = np.pad(self.known, (0, grow))

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Instruction counts of block ids, 0 for ids never defined."""
        ids = np.asarray(ids).astype(np.int64)
        ok = ids < len(self.icount)
        out = np.zeros(len(ids), np.int64)
        out[ok] = self.icount[ids[ok]]
        return out

    def pcs(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids).astype(np.int64)
        return self.pc[np.minimum(ids, len(self.pc) - 1)]

    def flat_insns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(block_id, n, pc, size) for every instruction of every block."""
        parts = [_block_insns(blocks, insn_size) for blocks, insn_size, _ in self.rows]
        if not parts:
            empty = np.zeros(0, np.uint64)
            return empty, empty, empty, empty
        return tuple(np.concatenate(col) for col in zip(*parts))

    def insn_pc_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(insn_start per block id, pc per flat instruction): instruction n of
        block b is at pc[insn_start[b] + n]."""
        ids, _, pcs, _ = self.flat_insns()
        start = np.zeros(len(self.icount), np.int64)
        if len(ids):
            first = np.concatenate([[True], ids[1:] != ids[:-1]])
            start[ids[first].astype(np.int64)] = np.flatnonzero(first)
        return start, pcs


def _block_insns(blocks: np.ndarray, insn_size: np.ndarray):
    counts = blocks["n_insns"].astype(np.int64)
    if int(counts.sum()) != len(insn_size):
        raise ValueError("block definitions disagree with their instruction sizes")
    starts = np.cumsum(counts) - counts
    block_of = np.repeat(np.arange(len(blocks)), counts)
    sz = insn_size.astype(np.uint64)
    excl = np.append(np.cumsum(sz) - sz, np.uint64(0))
    offset = excl[:-1] - np.repeat(excl[starts], counts)
    n = np.arange(len(block_of)) - np.repeat(starts, counts)
    return (blocks["block_id"][block_of], n.astype(np.uint16),
            blocks["pc"][block_of] + offset, insn_size.astype(np.uint8))


@dataclass
class StreamLog:
    """What the side data says about one thread's stream."""

    stream: Stream
    pid: int
    tid: int
    parent_pid: int | None = None
    exited: bool = False
    parts: list = field(default_factory=list)     # closed segments, per packet: (ends, firsts, counts)
    max_end: int = 0                              # the highest end ordinal of a closed segment
    max_drawn: int = 0                            # the highest position one drew, + 1
    closed_insns: int = 0                         # instructions of the closed segments
    ends: np.ndarray | None = None                # after finish(): closed segments sorted by
    firsts: np.ndarray | None = None              # end ordinal: end, first position,
    counts: np.ndarray | None = None              # instructions
    partial: dict = field(default_factory=dict)   # ordinal -> twin block id
    n_exec: int = 0                               # execs started (ordinals 0 .. n_exec-1)
    continuations: int = 0                        # execs repeated by a CONTINUES packet
    last_seq: int = -1                            # the latest packet: its seq,
    cur_done: bool = True                         # whether its current block finished,
    cur_accessed: int = 0                         # and how far it got (fault_point.h)
    open_ids: dict = field(default_factory=dict)  # ordinal -> block id, execs no segment closed yet
    # filled by finish()
    open_start: int = 0
    open_first: int = 0
    open_insns: int = 0
    tail: tuple | None = None                     # (ordinal, instructions that ran) of a cut last block

    def closed_end(self) -> int:
        return self.max_end

    def partial_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The PARTIAL corrections as sorted arrays: (ordinals, twin block ids)."""
        cached = getattr(self, "_partial_cache", None)
        if cached is None or cached[0] != len(self.partial):
            cut = np.array(sorted(self.partial), np.int64)
            twins = np.array([self.partial[o] for o in cut.tolist()], np.int64)
            cached = self._partial_cache = (len(self.partial), cut, twins)
        return cached[1], cached[2]


class PositionPlan:
    """Positions of a whole trace from its packets' side data (add) and the
    exec ids of the execs that no segment closed (add_execs)."""

    def __init__(self, blocks: BlockTable, arch: str | None, keep_segments: bool = True):
        """arch: the cannoli_db.arch name, needed from finish() on (None until then is allowed).
        keep_segments=False counts without keeping every segment (the
        recorder's summary): memory stays bounded however long the trace."""
        self.blocks = blocks
        self.arch = arch
        self.keep_segments = keep_segments
        self.streams: dict[Stream, StreamLog] = {}
        self.total = 0
        self.drawn = 0            # positions the closed segments cover, holes included
        self._finished = False

    # -- feeding -------------------------------------------------------------

    def add(self, header, events: np.ndarray, stream: Stream) -> None:
        """One packet's header and events (every packet of the trace, any order)."""
        log = self.streams.get(stream)
        if log is None:
            log = self.streams[stream] = StreamLog(stream, int(header["pid"]), int(header["tid"]))
        seq = int(header["packet_seq"])
        n = int(header["count"][F.SEC_EXEC]) if F.SEC_EXEC < len(header["count"]) else 0
        continues = bool(int(header["flags"]) & F.PACKET_CONTINUES)
        log.n_exec = max(log.n_exec, int(header["exec_first"]) + n)
        log.continuations += int(continues and n > 0)
        if seq > log.last_seq:
            log.last_seq, log.cur_done, log.cur_accessed = seq, bool(header["cur_done"]), int(header["cur_accessed"])
        if not len(events):
            return
        kind = events["kind"]
        seg = events[kind == F.EV_SEGMENT]
        if len(seg):
            ends, firsts, counts = (seg["ordinal"].astype(np.int64), seg["v"][:, 0].astype(np.int64),
                                    seg["v"][:, 1].astype(np.int64))
            log.max_end = max(log.max_end, int(ends.max()))
            log.max_drawn = max(log.max_drawn, int((firsts + counts).max()))
            log.closed_insns += int(counts.sum())
            if self.keep_segments:
                log.parts.append((ends, firsts, counts))
        for ev in events[kind == F.EV_PARTIAL]:
            log.partial[int(ev["ordinal"])] = int(ev["v"][1])
        start = events[kind == F.EV_THREAD_START]
        if len(start) and int(start["v"][0, 2]):
            log.parent_pid = int(start["v"][0, 2])
        log.exited |= bool(np.any(kind == F.EV_THREAD_EXIT))

    def add_execs(self, stream: Stream, exec_first: int, ids: np.ndarray) -> None:
        """Exec ids of a packet, kept only where no segment has closed them (yet)."""
        log = self.streams[stream]
        floor = log.closed_end()
        for k in np.flatnonzero(exec_first + np.arange(len(ids)) >= floor):
            log.open_ids[exec_first + int(k)] = int(ids[k])
        if len(log.open_ids) > 4 * F.CAP_EXEC:
            log.open_ids = {o: b for o, b in log.open_ids.items() if o >= floor}

    def open_range(self, stream: Stream) -> tuple[int, int]:
        """Exec ordinals [a, b) of a stream that no segment closed."""
        log = self.streams[stream]
        return log.closed_end(), log.n_exec

    # -- finishing -------------------------------------------------------------

    def finish(self) -> int:
        """Place what no segment closed and return the total instruction count."""
        for log in self.streams.values():
            cols = [np.concatenate(c) for c in zip(*log.parts)] if log.parts else [np.zeros(0, np.int64)] * 3
            order = np.argsort(cols[0], kind="stable")
            log.ends, log.firsts, log.counts = (c[order] for c in cols)
            log.parts = []
            self._close_tail(log)
        self.drawn = max((log.max_drawn for log in self.streams.values()), default=0)
        position = self.drawn
        for log in sorted(self.streams.values(), key=lambda s: (s.pid, s.tid, s.stream)):
            log.open_first = position
            position += log.open_insns
        self.total = position
        self._finished = True
        return self.total

    def _close_tail(self, log: StreamLog) -> None:
        log.open_start = log.closed_end()
        ordinals = np.array(sorted(o for o in log.open_ids if o >= log.open_start), np.int64)
        ids = np.array([log.open_ids[o] for o in ordinals], np.int64)
        counts = self.blocks.lookup(ids)
        counts = self._apply_partial(log, ordinals, counts)
        if not log.cur_done and len(ordinals) and ordinals[-1] == log.n_exec - 1:
            full = int(counts[-1])
            ran = died_at(self.blocks.rows, self.arch, int(ids[-1]), log.cur_accessed, full)
            log.tail = (int(ordinals[-1]), ran)
            counts[-1] = ran
        log.open_insns = int(counts.sum())

    def _apply_partial(self, log: StreamLog, ordinals: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Counts corrected for blocks found cut short: PARTIAL events (the twin's
        count) and the thread's cut last block."""
        if not log.partial and log.tail is None:
            return counts
        counts = counts.copy()
        if log.partial:
            cut, twins = log.partial_arrays()
            k = np.searchsorted(cut, ordinals)
            hit = (k < len(cut)) & (cut[np.minimum(k, len(cut) - 1)] == ordinals)
            counts[hit] = self.blocks.lookup(twins[k[hit]])
        if log.tail is not None:
            counts[ordinals == log.tail[0]] = log.tail[1]
        return counts

    # -- positions of a packet --------------------------------------------------

    def exec_positions(self, stream: Stream, exec_first: int, seg_insns: int,
                       ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(idx, instructions that ran) of each exec of a packet."""
        log = self.streams[stream]
        ordinals = exec_first + np.arange(len(ids), dtype=np.int64)
        counts = self._apply_partial(log, ordinals, self.blocks.lookup(ids))
        seg = np.searchsorted(log.ends, ordinals, side="right")  # first segment ending after each exec
        closed = seg < len(log.ends)
        first = np.where(closed, log.firsts[np.minimum(seg, max(len(log.ends) - 1, 0))] if len(log.ends) else 0,
                         log.open_first)
        # within a piece (a run in one segment) positions follow the counts; the
        # packet's first piece starts seg_insns into its segment, the others at its start
        starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]]) if len(seg) else np.zeros(0, np.int64)
        run = np.cumsum(counts) - counts
        offset = run - np.repeat(run[starts], np.diff(np.append(starts, len(counts))))
        offset[: (starts[1] if len(starts) > 1 else len(counts))] += seg_insns
        return (first + offset).astype(np.uint64), counts

    def syscall_position(self, seq: int) -> int:
        """idx of a syscall instruction: one before its SYSCALL event's seq (the
        end of the segment its entry closed)."""
        return seq - 1

    # -- per-stream facts -------------------------------------------------------

    def stream_span(self, log: StreamLog) -> tuple[int | None, int | None, int]:
        """(first idx, last idx, instructions) of a stream."""
        ran = log.counts > 0
        firsts = [int(log.firsts[ran].min())] if ran.any() else []
        lasts = [int((log.firsts + log.counts - 1)[ran].max())] if ran.any() else []
        if log.open_insns:
            firsts.append(log.open_first)
            lasts.append(log.open_first + log.open_insns - 1)
        insns = log.closed_insns + log.open_insns
        return (min(firsts) if firsts else None, max(lasts) if lasts else None, insns)

    def blocks_of(self, log: StreamLog) -> int:
        return log.n_exec
