"""Global instruction positions (idx) from per-thread streams.

Each thread's stream is a sequence of executed blocks (exec ordinals 0, 1, ...)
cut into *segments* by SEGMENT events, each carrying a global sequence number
(cannoli_format.h).  The global order puts segments in sequence-number order
(a thread's still-open last segment after all closed ones); idx is the running
instruction count in that order.

Pass A (`PositionPlan.add_packet`) sees every packet once without memory data
and reduces it to *pieces*: runs of a packet's execs that lie in one segment,
with their instruction totals.  `finish()` orders the pieces and gives each its
first idx.  Pass B (`PositionPlan.exec_positions`) then turns any packet's
execs into positions on its own, so chunks can be indexed one at a time with
memory bounded by a chunk, not by the trace.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from . import format as F
from .decode import Packet
from .fault_point import died_at

Thread = tuple[int, int]  # (pid, tid)
NEVER = np.iinfo(np.uint64).max  # the sequence number of a thread's open last segment


@dataclass
class Piece:
    thread: Thread
    start: int          # first exec ordinal
    n_exec: int
    insns: int          # instructions, final after finish()
    last_block: int     # block id of the piece's last exec
    seq: int = 0
    first_idx: int = 0


@dataclass
class BlockTable:
    """Everything about translated blocks, indexed by block id."""

    icount: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    pc: np.ndarray = field(default_factory=lambda: np.zeros(1, np.uint64))
    base_id: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    known: np.ndarray = field(default_factory=lambda: np.zeros(1, bool))
    insn_start: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    rows: list = field(default_factory=list)  # (blocks, insn_size, insn_bytes) per packet

    def add(self, p: Packet) -> None:
        if not len(p.blocks):
            return
        ids = p.blocks["block_id"].astype(np.int64)
        self._grow(int(ids.max()) + 1)
        self.icount[ids] = p.blocks["n_insns"]
        self.pc[ids] = p.blocks["pc"]
        self.base_id[ids] = p.blocks["base_id"]
        self.known[ids] = True
        self.rows.append((p.blocks.copy(), p.insn_size.copy(), p.insn_bytes.copy()))

    def _grow(self, n: int) -> None:
        if n > len(self.icount):
            grow = max(n, 2 * len(self.icount)) - len(self.icount)
            self.icount = np.pad(self.icount, (0, grow))
            self.pc = np.pad(self.pc, (0, grow))
            self.base_id = np.pad(self.base_id, (0, grow))
            self.known = np.pad(self.known, (0, grow))
            self.insn_start = np.pad(self.insn_start, (0, grow))

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Instruction counts of block ids, 0 for ids never defined."""
        ids = ids.astype(np.int64)
        ok = ids < len(self.icount)
        out = np.zeros(len(ids), np.int64)
        out[ok] = self.icount[ids[ok]]
        return out

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


class PositionPlan:
    def __init__(self, blocks: BlockTable, arch: str = "x86_64"):
        self.blocks = blocks
        self.arch = arch
        self.pieces: dict[Thread, list[Piece]] = defaultdict(list)
        self.segment_ends: dict[Thread, list[tuple[int, int]]] = defaultdict(list)
        self.overrides: dict[tuple[Thread, int], int] = {}  # (thread, ordinal) -> instructions that ran
        self._unknown: list[tuple[Piece, np.ndarray]] = []
        self._tail: dict[Thread, tuple] = {}
        self._last_exec: dict[Thread, tuple[int, int, int]] = {}  # packet_seq, ordinal, block id
        self._by_start: dict[Thread, dict[int, Piece]] = defaultdict(dict)

    @staticmethod
    def _split_points(p: Packet) -> np.ndarray:
        """Exec ordinals inside the packet where a segment ends."""
        seg = p.events[p.events["kind"] == F.EV_SEGMENT]
        ends = seg["ordinal"].astype(np.int64)
        inside = ends[(ends > p.exec_first) & (ends < p.exec_first + len(p.exec))]
        return np.unique(inside) - p.exec_first

    def add_packet(self, p: Packet) -> None:
        """Pass A: blocks must already be added for this packet."""
        thread = p.thread
        seg = p.events[p.events["kind"] == F.EV_SEGMENT]
        self.segment_ends[thread] += list(zip(seg["ordinal"].tolist(), seg["seq"].tolist()))
        for ev in p.events[p.events["kind"] == F.EV_PARTIAL]:
            self.overrides[(thread, int(ev["ordinal"]))] = -int(ev["v"][1])  # twin id, resolved in finish()
        tail = self._tail.get(thread)
        if tail is None or p.packet_seq > tail[0]:
            self._tail[thread] = (p.packet_seq, p.cur_done, p.cur_accessed)
        if not len(p.exec):
            return
        last = self._last_exec.get(thread)
        if last is None or p.packet_seq > last[0]:
            self._last_exec[thread] = (p.packet_seq, p.exec_first + len(p.exec) - 1, int(p.exec[-1]))
        bounds = np.concatenate([[0], self._split_points(p), [len(p.exec)]])
        known = self.blocks.known[np.minimum(p.exec, len(self.blocks.known) - 1)] & (p.exec < len(self.blocks.known))
        counts = np.where(known, self.blocks.lookup(p.exec), 0)
        sums = np.add.reduceat(counts, bounds[:-1]) if len(counts) else np.zeros(0, np.int64)
        for k in range(len(bounds) - 1):
            a, b = int(bounds[k]), int(bounds[k + 1])
            piece = Piece(thread, p.exec_first + a, b - a, int(sums[k]), int(p.exec[b - 1]))
            self.pieces[thread].append(piece)
            self._by_start[thread][piece.start] = piece
            if not known[a:b].all():
                self._unknown.append((piece, p.exec[a:b][~known[a:b]].copy()))

    def piece_of(self, thread: Thread, ordinal: int) -> Piece | None:
        pieces = self.pieces.get(thread)
        if not pieces:
            return None
        starts = self._starts[thread]
        k = int(np.searchsorted(starts, ordinal, side="right")) - 1
        if k < 0 or ordinal >= pieces[k].start + pieces[k].n_exec:
            return None
        return pieces[k]

    def finish(self) -> int:
        """Resolve late block definitions and early stops, order the pieces and
        give each its first position.  Returns the total instruction count."""
        for piece, ids in self._unknown:
            piece.insns += int(self.blocks.lookup(ids).sum())
        self._starts = {}
        for thread, pieces in self.pieces.items():
            pieces.sort(key=lambda pc: pc.start)
            self._starts[thread] = np.array([pc.start for pc in pieces], np.int64)
        self._resolve_overrides()
        ordered = []
        for thread, pieces in self.pieces.items():
            ends = sorted(self.segment_ends.get(thread, []))
            end_ord = np.array([e for e, _ in ends], np.int64)
            end_seq = [s for _, s in ends]
            for pc in pieces:
                k = int(np.searchsorted(end_ord, pc.start + pc.n_exec, side="left"))
                pc.seq = end_seq[k] if k < len(end_seq) else NEVER
                ordered.append(pc)
        ordered.sort(key=lambda pc: (pc.seq, pc.thread, pc.start))
        total = 0
        for pc in ordered:
            pc.first_idx = total
            total += pc.insns
        self.ordered = ordered
        return total

    def _resolve_overrides(self) -> None:
        resolved = {}
        for (thread, ordinal), twin in self.overrides.items():
            twin = -twin
            ran = int(self.blocks.lookup(np.array([twin]))[0])
            full = int(self.blocks.lookup(np.array([self.blocks.base_id[twin] if twin < len(self.blocks.base_id) else 0]))[0])
            resolved[(thread, ordinal)] = (ran, full)
        for thread, (_, done, accessed) in self._tail.items():
            last = self._last_exec.get(thread)
            if last is None or done:
                continue
            full = int(self.blocks.lookup(np.array([last[2]]))[0])
            resolved[(thread, last[1])] = (died_at(self.blocks.rows, self.arch, last[2], accessed, full), full)
        self.overrides = {}
        for key, (ran, full) in resolved.items():
            piece = self.piece_of(*key)
            if piece is not None:
                piece.insns -= full - ran
                self.overrides[key] = ran

    def exec_positions(self, p: Packet) -> tuple[np.ndarray, np.ndarray]:
        """Pass B: (idx, instructions that ran) for each exec of the packet."""
        counts = self.blocks.lookup(p.exec)
        for (thread, ordinal), ran in self.overrides.items():
            k = ordinal - p.exec_first
            if thread == p.thread and 0 <= k < len(counts):
                counts[k] = ran
        idx = np.zeros(len(counts), np.uint64)
        bounds = np.concatenate([[0], self._split_points(p), [len(p.exec)]])
        for k in range(len(bounds) - 1):
            a, b = int(bounds[k]), int(bounds[k + 1])
            if a == b:
                continue  # a segment boundary with no exec of this packet on one side
            piece = self._by_start[p.thread][p.exec_first + a]
            run = counts[a:b]
            idx[a:b] = piece.first_idx + np.cumsum(run) - run
        return idx, counts

    def position_before(self, p: Packet) -> int | None:
        """idx of the thread's exec just before this packet's first one (what
        link-0 accesses and events refer to): the last exec of its piece."""
        ordinal = p.exec_first - 1
        piece = self.piece_of(p.thread, ordinal)
        if piece is None or ordinal != piece.start + piece.n_exec - 1:
            return None
        ran = self.overrides.get((p.thread, ordinal))
        if ran is None:
            ran = int(self.blocks.lookup(np.array([piece.last_block]))[0])
        return piece.first_idx + piece.insns - ran

    def first_position(self, thread: Thread) -> int | None:
        pieces = self.pieces.get(thread)
        return min(pc.first_idx for pc in pieces) if pieces else None
