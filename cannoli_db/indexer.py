"""`cannoli index`: chunk files -> TRACE/trace.duckdb.

Pass A reads every chunk without its memory data: block definitions, events and
the executed-block stream, reduced to position pieces (positions.py).  Pass B
decodes each chunk in full, in parallel threads, turns it into exec and mem
rows with their positions, and bulk-loads them through Arrow.  Memory stays
bounded by a few chunks, not by the trace.

The database is built under a temporary name and renamed into place when
complete, so an interrupted index never leaves a trace.duckdb that looks
valid.  A damaged chunk stops the index at that chunk: everything before it is
indexed, and meta says where and why the trace is incomplete.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from . import address_space, calls, guest_binary, schema, syscall_tables, tracedir
from . import format as F
from .decode import ChunkError, Packet, chunk_files, decode_chunk_file
from .errors import CannoliError
from .positions import BlockTable, PositionPlan
from .progress import Progress

DB_NAME = "trace.duckdb"
INSERT_BATCH_ROWS = 4_000_000
DUCKDB_MEMORY_LIMIT = "2GB"  # DuckDB spills beyond this; keeps the index's memory bounded

# Where an event's blob lies: (offset, length) value indices, by event kind
_BLOB_FIELDS = {F.EV_BLOB: (1, 2), F.EV_REG_NAME: (1, 2), F.EV_PROCESS: (5, 6)}


@dataclass
class EventLog:
    """Every event of the trace with its thread, plus the strings they carry."""

    rows: list = field(default_factory=list)  # (pid, tid, packet_seq, events array)
    blobs: dict = field(default_factory=dict)  # (pid, tid, packet_seq, event index) -> bytes

    def add(self, p: Packet) -> None:
        if not len(p.events):
            return
        self.rows.append((p.pid, p.tid, p.packet_seq, p.events.copy()))
        with_blob = np.flatnonzero(np.isin(p.events["kind"], list(_BLOB_FIELDS)))
        for i in with_blob:
            ev = p.events[i]
            at, size = _BLOB_FIELDS[int(ev["kind"])]
            off, length = int(ev["v"][at]), int(ev["v"][size])
            if off + length > len(p.blob):
                raise ChunkError("?", "event points outside its packet's blob section")
            self.blobs[(p.pid, p.tid, p.packet_seq, int(i))] = bytes(p.blob[off : off + length])

    def register_names(self) -> list[str]:
        """Register names by number (CN_EV_REG_NAME); unnamed numbers get regN."""
        named = {}
        for pid, tid, pseq, events in self.rows:
            for i in np.flatnonzero(events["kind"] == F.EV_REG_NAME):
                number = int(events[i]["v"][0])
                if number < F.MAX_REGS:
                    named[number] = self.blobs[(pid, tid, pseq, int(i))].decode("ascii", "replace")
        return [named.get(n, f"reg{n}") for n in range(F.MAX_REGS)]

    def table(self) -> np.ndarray:
        """All events as one structured array with pid, tid, packet_seq, index."""
        dtype = np.dtype([("pid", "<u4"), ("tid", "<u4"), ("packet_seq", "<u8"), ("i", "<u4"),
                          ("kind", "<u2"), ("ordinal", "<u8"), ("seq", "<u8"), ("v", "<u8", (7,))])
        parts = []
        for pid, tid, pseq, events in self.rows:
            part = np.zeros(len(events), dtype)
            part["pid"], part["tid"], part["packet_seq"] = pid, tid, pseq
            part["i"] = np.arange(len(events))
            for name in ("kind", "ordinal", "seq", "v"):
                part[name] = events[name]
            parts.append(part)
        table = np.concatenate(parts) if parts else np.zeros(0, dtype)
        return table[np.lexsort((table["i"], table["packet_seq"], table["tid"], table["pid"]))]


@dataclass
class IndexResult:
    db_path: Path
    chunks: int
    instructions: int
    exec_rows: int
    mem_rows: int
    seconds: float
    complete: bool
    problem: str | None


def index_trace(trace_dir: Path, workers: int = 2, quiet: bool = False) -> IndexResult:
    trace_dir = Path(trace_dir)
    meta = _meta_or_stand_in(trace_dir)
    started = time.monotonic()
    files = chunk_files(trace_dir)
    problem = _sequence_gap(files)
    if problem:
        files = files[: int(problem.split()[1])]
    tmp = trace_dir / f".{DB_NAME}.tmp"
    for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
        leftover.unlink(missing_ok=True)
    _remove_stale_chunk_temps(trace_dir, meta)
    meta = _recover_layout(trace_dir, meta)
    blocks, events = BlockTable(), EventLog()
    plan = PositionPlan(blocks, meta.get("qemu_target") or meta.get("arch") or "x86_64")
    with Progress("indexing", total=2 * len(files), quiet=quiet) as progress:
        used, problem = _pass_a(files, blocks, plan, events, progress, problem)
        if "arch" not in meta:
            meta["arch"] = plan.arch = _arch_from_process(events)
        total = plan.finish()
        con = duckdb.connect(str(tmp), config={"memory_limit": DUCKDB_MEMORY_LIMIT})
        try:
            for ddl in schema.create_statements():
                con.execute(ddl)
            # exec and mem need no particular physical order (mem_by_addr does): ~25% faster loads
            con.execute("SET preserve_insertion_order = false")
            ev_table = events.table()
            walk = _CallWalk(con, meta["arch"], blocks, plan, ev_table, events.register_names())
            loaded = _pass_b(con, files[: used.chunks], plan, blocks, events.register_names(), workers, progress,
                             walk)
            con.execute("SET preserve_insertion_order = true")
            calls_seconds = walk.finish()
            _load_blocks(con, blocks)
            _load_threads(con, plan, ev_table)
            syscall_rows = _load_syscalls(con, plan, ev_table, events, meta)
            address_space.load(con, meta, ev_table, events.blobs, plan)
            sort_seconds = _load_mem_by_addr(con)
            complete = bool(meta.get("complete")) and problem is None
            _load_meta(con, meta, index_complete=complete, index_problem=problem, index_instructions=total,
                       index_chunks=used.chunks, index_unplaced_mem=loaded.unplaced_mem,
                       index_mem_by_addr_seconds=sort_seconds, index_calls_seconds=calls_seconds,
                       index_calls_dropped=walk.walker.dropped,
                       index_seconds=round(time.monotonic() - started, 3))
            con.execute("CHECKPOINT")
        finally:
            con.close()
    os.replace(tmp, trace_dir / DB_NAME)
    why = problem or recording_problem(meta)
    return IndexResult(trace_dir / DB_NAME, used.chunks, total, loaded.exec_rows, loaded.mem_rows,
                       time.monotonic() - started, complete, why)


def recording_problem(meta: dict) -> str | None:
    """Why meta.json says the recording is not complete, in words (None if it is)."""
    if meta.get("complete"):
        return None
    if meta.get("interrupted"):
        return "the recording was interrupted"
    return meta.get("incomplete_reason") or meta.get("error") or "the recording did not finish"


def _meta_or_stand_in(trace_dir: Path) -> dict:
    """meta.json, or, when it is damaged, what the chunks alone can tell."""
    try:
        return tracedir.read_meta(trace_dir)
    except tracedir.MetaDamaged as exc:
        return {"format_version": F.FORMAT_VERSION, "complete": False,
                "error": f"{exc}; indexed from the chunks alone"}


def _arch_from_process(events: EventLog) -> str:
    """The guest architecture from the program that the PROCESS event names."""
    ev = events.table()
    for e in ev[ev["kind"] == F.EV_PROCESS]:
        path = events.blobs.get((int(e["pid"]), int(e["tid"]), int(e["packet_seq"]), int(e["i"])), b"")
        try:
            return guest_binary.inspect(path.decode(errors="surrogateescape")).arch
        except (CannoliError, OSError):
            continue
    return "x86_64"


def _remove_stale_chunk_temps(trace_dir: Path, meta: dict) -> None:
    """A recorder killed while writing a chunk leaves its temporary file; it never
    became a chunk.  Removed unless that recorder is still running."""
    if tracedir.recorder_alive(meta):
        return
    for stale in (trace_dir / tracedir.CHUNKS_NAME).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def _recover_layout(trace_dir: Path, meta: dict) -> dict:
    """A recorder that died before finishing leaves QEMU's layout log unread: read it now."""
    from .recorder import layout_log

    log = trace_dir / layout_log.LOG_NAME
    if not log.exists() or tracedir.recorder_alive(meta):
        return meta
    if "initial_layout" not in meta:
        meta = {**meta, "initial_layout": layout_log.parse(log)}
        tracedir.write_meta(trace_dir, meta)
    log.unlink(missing_ok=True)
    return meta


def _sequence_gap(files: list[Path]) -> str | None:
    for i, path in enumerate(files):
        if int(path.stem) != i:
            return f"chunk {i:06d} is missing; indexed the chunks before it"
    return None


@dataclass
class _Used:
    chunks: int = 0


def _pass_a(files, blocks: BlockTable, plan: PositionPlan, events: EventLog, progress, problem):
    """Blocks, events and position pieces of every chunk; stops at a damaged one."""
    used = _Used()
    for path in files:
        try:
            packets = decode_chunk_file(path, with_mem=False)
            for p in packets:
                blocks.add(p)
                events.add(p)
        except (ChunkError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, ChunkError) else str(exc)
            return used, f"chunk {path.stem} is damaged ({reason}); indexed the {used.chunks} chunks before it"
        for p in packets:
            plan.add_packet(p)
        used.chunks += 1
        progress.advance()
    return used, problem


@dataclass
class _Loaded:
    exec_rows: int = 0
    mem_rows: int = 0
    reg_rows: int = 0
    unplaced_mem: int = 0  # accesses whose position lies in a chunk that could not be indexed


def _pass_b(con, files, plan: PositionPlan, blocks: BlockTable, reg_names: list[str], workers: int,
            progress, walk: _CallWalk) -> _Loaded:
    insn_start, insn_pc = blocks.insn_pc_table()
    loaded = _Loaded()

    def rows_of(path: Path):
        tables, unplaced, feeds = [], 0, []
        for p in decode_chunk_file(path):
            tables.append(_packet_rows(p, plan, blocks, insn_start, insn_pc, reg_names, path.stem))
            unplaced += len(p.mem_info) - tables[-1][1].num_rows
            feeds.append(walk.packet_feed(p, tables[-1][0], tables[-1][2]))
        return [pa.concat_tables(parts) for parts in zip(*tables)], unplaced, feeds

    batch: list = []

    def flush():
        # DuckDB ingests a few large Arrow tables much faster than many small ones
        for table_name, parts in zip(("exec", "mem", "regs"), zip(*batch)):
            rows = pa.concat_tables(parts)  # noqa: F841 (read by the SQL below)
            con.execute(f"INSERT INTO {table_name} SELECT * FROM rows")
        batch.clear()

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for tables, unplaced, feeds in _bounded_map(pool, rows_of, files, window=workers + 1):
            walk.feed(feeds)
            batch.append(tables)
            loaded.exec_rows += tables[0].num_rows
            loaded.mem_rows += tables[1].num_rows
            loaded.reg_rows += tables[2].num_rows
            loaded.unplaced_mem += unplaced
            if sum(t.num_rows for tables in batch for t in tables) >= INSERT_BATCH_ROWS:
                flush()
            progress.advance()
        if batch:
            flush()
    return loaded


class _CallWalk:
    """The calls table, walked while pass B hands over each chunk's executions (calls.py)."""

    def __init__(self, con, arch: str, blocks: BlockTable, plan: PositionPlan, ev: np.ndarray, reg_names):
        started = time.monotonic()
        self.con = con
        self.walker = calls.CallWalker(arch, calls.BlockCode.from_sections(blocks.rows))
        numbers = list(calls.sigreturn_numbers(arch))
        returns = ev[(ev["kind"] == F.EV_SYSCALL) & np.isin(ev["v"][:, 0], numbers)]
        sigreturns: dict = {}
        for e in returns:
            thread = (int(e["pid"]), int(e["tid"]))
            idx = syscall_position(plan, *thread, int(e["ordinal"]))
            if idx is not None:
                sigreturns.setdefault(thread, []).append(idx)
        self.order = calls.InOrder(self.walker, sigreturns)
        # the stack pointer's register number, where the trace has registers
        self.sp_reg = next((n for n, name in enumerate(reg_names) if name in ("rsp", "sp")), None)
        self.seconds = time.monotonic() - started

    def packet_feed(self, p: Packet, exec_table: pa.Table, reg_table: pa.Table):
        """What the walker needs of one packet (built in pass B's worker threads)."""
        sp_idx = sp_value = np.zeros(0, np.uint64)
        if self.sp_reg is not None and reg_table.num_rows:
            n = reg_table["n"].to_numpy()
            sp_idx = reg_table["idx"].to_numpy()[n == self.sp_reg]
            sp_value = reg_table["value"].to_numpy()[n == self.sp_reg]
        return (p.thread, p.tid, p.exec_first, exec_table["idx"].to_numpy(), exec_table["block_id"].to_numpy(),
                exec_table["icount"].to_numpy(), sp_idx, sp_value)

    def feed(self, feeds) -> None:
        started = time.monotonic()
        for f in feeds:
            self.order.add(*f)
        self._store(self.walker.take())
        self.seconds += time.monotonic() - started

    def _store(self, rows: pa.Table) -> None:
        # rows come in the order frames leave their stacks: end_idx rises, which is what keeps
        # Trace.stack's row-group pruning tight (docs/schema.md, calls); no sort needed
        if rows.num_rows:
            self.con.execute("INSERT INTO calls SELECT * FROM rows")

    def finish(self) -> float:
        """The rest of the rows; returns the seconds the walk took in all."""
        started = time.monotonic()
        self._store(self.order.finish())
        return round(self.seconds + time.monotonic() - started, 3)


def _bounded_map(pool, func, items, window: int):
    """pool.map in order, but with at most `window` results alive at once, so
    memory stays bounded by a few chunks however long the trace is."""
    pending = deque()
    for item in items:
        pending.append(pool.submit(func, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _link_bases(p: Packet, plan, idx: np.ndarray, link: np.ndarray, chunk: str, what: str):
    """Resolve records' exec links (k >= 1 -> exec[k-1]; 0 -> the block running
    when the packet began): the idx of each record's block start, the block id,
    and which records can be placed at all."""
    if np.any(link > len(p.exec)):
        raise ChunkError(chunk, f"{what} linked to an exec beyond its packet")
    block = np.where(link > 0, p.exec[np.maximum(link - 1, 0)] if len(p.exec) else 0, 0).astype(np.int64)
    base = np.zeros(len(link), np.uint64)
    inside = link > 0
    base[inside] = idx[link[inside] - 1]
    keep = np.ones(len(link), bool)
    if not inside.all():
        before = plan.position_before(p)
        piece = plan.piece_of(p.thread, p.exec_first - 1)
        if before is None or piece is None:
            # the packet before this one is not indexed (a damaged or missing
            # chunk): these records cannot be placed; they are counted, not lost silently
            keep = inside
        else:
            base[~inside] = before
            block[~inside] = piece.last_block
    return base, block, keep


def _packet_rows(p: Packet, plan, blocks, insn_start, insn_pc, reg_names: list[str], chunk: str):
    idx, ran = plan.exec_positions(p)
    tid = np.full(len(p.exec), p.tid, np.uint32)
    exec_table = pa.table({
        "idx": idx, "tid": tid, "block_id": p.exec.astype(np.uint32),
        "pc": blocks.pc[p.exec.astype(np.int64)], "icount": ran.astype(np.uint16),
    })
    info = p.mem_info
    insn = ((info >> F.MEMINFO_INSN_SHIFT) & F.MEMINFO_INSN_MASK).astype(np.int64)
    base, block, keep = _link_bases(p, plan, idx, (info >> F.MEMINFO_LINK_SHIFT).astype(np.int64), chunk,
                                    "memory access")
    if np.any(insn[keep] >= blocks.lookup(block[keep])):
        raise ChunkError(chunk, "memory access names an instruction outside its block")
    mem_table = pa.table({
        "idx": (base + insn.astype(np.uint64))[keep], "tid": np.full(int(keep.sum()), p.tid, np.uint32),
        "pc": insn_pc[insn_start[block[keep]] + insn[keep]], "addr": p.mem_addr[keep],
        "size": (1 << (info[keep] & F.MEMINFO_SHIFT_MASK)).astype(np.uint8),
        "is_write": (info[keep] & F.MEMINFO_STORE) != 0, "value": p.mem_value[keep],
    })
    return exec_table, mem_table, _reg_rows(p, plan, idx, reg_names, chunk)


def _reg_rows(p: Packet, plan, idx: np.ndarray, reg_names: list[str], chunk: str) -> pa.Table:
    """Register changes at block entry: idx is the block's first instruction."""
    info = p.reg_info
    base, _, keep = _link_bases(p, plan, idx, (info >> F.REGINFO_LINK_SHIFT).astype(np.int64), chunk,
                                "register value")
    number = (info & F.REGINFO_NUMBER_MASK).astype(np.int32)  # < MAX_REGS: decode checked it
    names = pa.DictionaryArray.from_arrays(pa.array(number[keep]), pa.array(reg_names)).cast(pa.string())
    return pa.table({
        "idx": base[keep], "tid": np.full(int(keep.sum()), p.tid, np.uint32),
        "n": number[keep].astype(np.uint8), "reg": names, "value": p.reg_value[keep],
    })


def _load_mem_by_addr(con) -> float:
    """Fill mem_by_addr; returns the seconds the sort took (reported in meta)."""
    started = time.monotonic()
    con.execute("INSERT INTO mem_by_addr SELECT addr, idx, tid, pc, size, is_write, value FROM mem ORDER BY addr, idx")
    return round(time.monotonic() - started, 3)


def _load_blocks(con, blocks: BlockTable) -> None:
    parts = []
    for rows, _, insn_bytes in blocks.rows:
        n_bytes = rows["n_bytes"].astype(np.int64)
        if int(n_bytes.sum()) != len(insn_bytes):
            raise ValueError("block definitions disagree with their instruction bytes")
        offsets = np.concatenate([[0], np.cumsum(n_bytes)]).astype(np.int32)
        code = pa.BinaryArray.from_buffers(pa.binary(), len(rows),
                                           [None, pa.py_buffer(offsets), pa.py_buffer(insn_bytes.tobytes())])
        parts.append(pa.table({
            "block_id": rows["block_id"], "pc": rows["pc"], "size": rows["n_bytes"],
            "icount": rows["n_insns"], "bytes": code, "base_id": rows["base_id"],
            "is_twin": (rows["flags"] & F.BLOCK_TWIN) != 0,
        }))
    if parts:
        blocks_table = pa.concat_tables(parts)
        con.execute("INSERT INTO blocks SELECT * FROM blocks_table")
    ids, ns, pcs, sizes = blocks.flat_insns()
    insns_table = pa.table({"block_id": ids.astype(np.uint32), "n": ns, "pc": pcs, "size": sizes})
    con.execute("INSERT INTO block_insns SELECT * FROM insns_table")


def _load_threads(con, plan: PositionPlan, ev: np.ndarray) -> None:
    rows = []
    starts = ev[ev["kind"] == F.EV_THREAD_START]
    parent = {(int(e["pid"]), int(e["tid"])): int(e["v"][2]) or None for e in starts}
    exited = {(int(e["pid"]), int(e["tid"])) for e in ev[ev["kind"] == F.EV_THREAD_EXIT]}
    threads = set(plan.pieces) | set(parent)
    for thread in sorted(threads):
        pieces = plan.pieces.get(thread, [])
        insns = sum(pc.insns for pc in pieces)
        first = min((pc.first_idx for pc in pieces if pc.insns), default=None)
        last = max((pc.first_idx + pc.insns - 1 for pc in pieces if pc.insns), default=None)
        rows.append((thread[1], thread[0], parent.get(thread), first, last, insns,
                     sum(pc.n_exec for pc in pieces), thread in exited))
    con.executemany("INSERT INTO threads VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def syscall_position(plan: PositionPlan, pid: int, tid: int, ordinal: int) -> int | None:
    """idx of a syscall instruction: the last instruction of the segment piece
    it closed (a syscall closes its thread's segment right after its block)."""
    piece = plan.piece_of((pid, tid), ordinal)
    if piece is None:
        return plan.first_position((pid, tid)) if ordinal == F.ORDINAL_BEFORE_FIRST else None
    return piece.first_idx + piece.insns - 1


def _load_syscalls(con, plan, ev: np.ndarray, events: EventLog, meta: dict) -> int:
    arch = meta.get("arch", "")
    names = syscall_tables.names(arch)
    calls = ev[ev["kind"] == F.EV_SYSCALL]
    # the return of a call is the thread's next SYSRET event after it
    ret_of = {}
    order = np.lexsort((ev["i"], ev["packet_seq"], ev["tid"], ev["pid"]))
    pending = {}
    for e in ev[order]:
        thread = (int(e["pid"]), int(e["tid"]))
        if e["kind"] == F.EV_SYSCALL:
            pending[thread] = (int(e["packet_seq"]), int(e["i"]))
            ret_of[pending[thread]] = None
        elif e["kind"] == F.EV_SYSRET and thread in pending:
            ret_of[pending.pop(thread)] = int(np.int64(e["v"][1]))
    rows = []
    for e in calls:
        idx = syscall_position(plan, int(e["pid"]), int(e["tid"]), int(e["ordinal"]))
        if idx is None:
            continue
        nr = int(np.int64(e["v"][0]))
        args = [syscall_tables.word(arch, int(x)) for x in e["v"][1:7]]
        ret = syscall_tables.result(arch, ret_of.get((int(e["packet_seq"]), int(e["i"]))))
        rows.append((idx, int(e["tid"]), int(e["pid"]), nr, names.get(nr), *args, ret, int(e["seq"])))
    if rows:
        con.executemany(f"INSERT INTO syscalls VALUES ({', '.join('?' * 13)})", rows)
    strings = []
    for e in ev[ev["kind"] == F.EV_BLOB]:
        idx = syscall_position(plan, int(e["pid"]), int(e["tid"]), int(e["ordinal"]))
        blob = events.blobs.get((int(e["pid"]), int(e["tid"]), int(e["packet_seq"]), int(e["i"])), b"")
        flags = int(e["v"][5])
        if idx is None:
            continue
        strings.append((idx, int(e["tid"]), int(np.int64(e["v"][3])), int(e["v"][4]), int(e["v"][0]),
                        None if flags & F.BLOB_UNREADABLE else blob.decode("utf-8", "backslashreplace"),
                        bool(flags & F.BLOB_TRUNCATED)))
    if strings:
        con.executemany("INSERT INTO syscall_strings VALUES (?, ?, ?, ?, ?, ?, ?)", strings)
    return len(rows)


def _load_meta(con, meta: dict, **index_facts) -> None:
    """meta.json's fields, plus what the index knows (index_* keys, see docs/schema.md)."""
    entries = dict(meta)
    entries.update(
        index_facts,
        schema_version=schema.SCHEMA_VERSION,
        # a meta.json older than the key is from plugin API 1, which has no register access
        regs_unavailable=meta["regs_unavailable"] if "regs_unavailable" in meta else tracedir.regs_unavailable(
            tracedir.REGS_NO_API, meta),
    )
    con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in sorted(entries.items())])
