"""`cannoli index`: chunk files -> the Parquet store and TRACE/trace.duckdb.

Pass A reads every chunk's side frame only (headers, events, block
definitions): the position plan, the small tables.  The few packets whose
execs no segment closed (threads stopped mid-segment) have their heavy frames
read too, to finish the plan.  Pass B turns each chunk into its store parts
(store/convert.py), in parallel threads, skipping chunks whose parts already
exist and were made from the same chunk; memory stays bounded by a few chunks.

trace.duckdb is built under a temporary name and renamed into place when
complete, so an interrupted index never leaves a trace.duckdb that looks valid;
parts are written one by one, each atomically, and are reused by the next
index.  A damaged chunk stops the index at that chunk: everything before it is
indexed, and meta says where and why the trace is incomplete.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.parquet as pq

from .. import arch as guest_arch
from .. import format as F
from .. import schema, store, tracedir
from ..chunkfile import drop_heavy
from ..decode import Chunk, ChunkError, chunk_files, read_chunk_file, read_chunk_header
from ..errors import CannoliError
from ..positions import BlockTable, PositionPlan
from ..progress import Progress
from ..store.convert import Context, convert_chunk, part_stamp, read_stamp, write_parts
from . import address_space, calls
from .events import EventLog
from .tables import load_blocks, load_meta, load_reg_names, load_store_index, load_syscalls, load_threads

DUCKDB_MEMORY_LIMIT = "2GB"  # DuckDB spills beyond this; keeps the index's memory bounded
# What the index writes (store parts and trace.duckdb) for a chunk not yet
# converted, for the free-space check: the larger of a share of the chunk's
# bytes (by format: format 4 keeps fewer bytes per record, the store does not)
# and an amount per record.  Measured on Debian's xz: format 3 1.76 bytes per
# chunk byte; format 4 3.2, and 1,043 MiB for 2.05e8 accesses and 8.6e7
# block executions.
STORE_PER_CHUNK_BYTE = {3: 1.8, 4: 3.3}
STORE_PER_ACCESS, STORE_PER_EXEC = 5.0, 1.5
FREE_SPACE_MARGIN = 64 << 20


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


@dataclass
class _PassA:
    chunks: int = 0                 # chunks read without damage
    packets: list = None            # (chunk seq, view index, stream, exec_first, n_exec)
    versions: set = None
    problem: str | None = None
    store_bytes: int = 0            # estimate of the parts still to write


def index_trace(trace_dir: Path, workers: int = 2, quiet: bool = False, _limit: tuple | None = None) -> IndexResult:
    """Index a trace.  (_limit: (chunks, why): index only that many, after pass B
    found damage that the checksums did not show.)"""
    trace_dir = Path(trace_dir)
    meta = _meta_or_stand_in(trace_dir)
    started = time.monotonic()
    files = chunk_files(trace_dir)
    problem = _sequence_gap(files)
    if problem:
        files = files[: int(problem.split()[1])]
    if _limit is not None:
        files, problem = files[: _limit[0]], _limit[1]
    tmp = trace_dir / f".{tracedir.DB_NAME}.tmp"
    for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
        leftover.unlink(missing_ok=True)
    _remove_stale_temps(trace_dir, meta)
    meta = _recover_layout(trace_dir, meta)
    arch = meta.get("qemu_target") or meta.get("arch")
    blocks, events = BlockTable(), EventLog()
    plan = PositionPlan(blocks, arch)  # without meta.json: known after pass A, before plan.finish() needs it
    with Progress("indexing", total=2 * len(files), quiet=quiet) as progress:
        scan = _pass_a(files, blocks, plan, events, progress)
        problem = scan.problem or problem
        files = files[: scan.chunks]
        if arch is None:
            meta["arch"] = arch = _arch_from_process(trace_dir, events)
        plan.arch = arch = guest_arch.get(arch).name
        if scan.versions and min(scan.versions) < min(F.INDEXABLE_VERSIONS):
            raise CannoliError(tracedir.older_format(trace_dir, min(scan.versions)))
        keep_heavy = _finish_tails(files, plan, scan)
        total = plan.finish()
        _check_free_space(trace_dir, files)
        ctx = Context.of(plan, events.register_names())
        con = duckdb.connect(str(tmp), config={"memory_limit": DUCKDB_MEMORY_LIMIT})
        con.execute("SET enable_progress_bar = false")  # it would print on the guest's stdout
        try:
            for ddl in schema.create_statements():
                con.execute(ddl)
            walk = _CallWalk(con, arch, plan, events)
            try:
                converted = _pass_b(trace_dir, files, ctx, workers, progress, keep_heavy, walk)
            except _Damaged as damage:
                con.close()
                return index_trace(trace_dir, workers, quiet, (damage.seq, _damaged(files[damage.seq], damage.seq,
                                                                                    damage.error)))
            calls_seconds = walk.finish()
            _remove_parts_beyond(trace_dir, len(files))
            load_blocks(con, blocks)
            load_reg_names(con, events.register_names(), int(meta.get("regs_recorded") or 0))
            load_threads(con, plan)
            load_syscalls(con, plan, events, arch)
            address_space.load(con, meta, events)
            load_store_index(con, trace_dir, len(files))
            rows = dict(con.execute("SELECT tbl, sum(rows) FROM parts GROUP BY tbl").fetchall())
            holes = plan.drawn - sum(log.closed_insns for log in plan.streams.values())
            # a recording stopped early loses its last segments by design: its own reason says so
            if holes and problem is None and meta.get("complete"):
                problem = (f"{holes:,} positions were drawn by segments that are not in the chunks "
                           f"(the recorder stopped before writing them)")
            complete = bool(meta.get("complete")) and problem is None
            load_meta(con, meta, index_complete=complete, index_problem=problem, index_instructions=total,
                      index_chunks=len(files), index_converted_chunks=converted,
                      index_calls_seconds=calls_seconds, index_calls_dropped=walk.walker.dropped,
                      index_seconds=round(time.monotonic() - started, 3))
            con.execute("CHECKPOINT")
        finally:
            con.close()
    os.replace(tmp, trace_dir / tracedir.DB_NAME)
    why = problem or tracedir.recording_problem(meta)
    return IndexResult(trace_dir / tracedir.DB_NAME, len(files), total, int(rows.get("exec") or 0),
                       int(rows.get("mem") or 0), time.monotonic() - started, complete, why)


def _meta_or_stand_in(trace_dir: Path) -> dict:
    """meta.json, or, when it is damaged, what the chunks alone can tell."""
    try:
        return tracedir.read_meta(trace_dir)
    except tracedir.MetaDamaged as exc:
        return {"format_version": F.FORMAT_VERSION, "complete": False,
                "error": f"{exc}; indexed from the chunks alone"}


def _arch_from_process(trace_dir: Path, events: EventLog) -> str:
    """The guest architecture from the program that the PROCESS event names (when meta.json cannot say)."""
    ev = events.table()
    for e in ev[ev["kind"] == F.EV_PROCESS]:
        found = guest_arch.of_program(events.blob(e).decode(errors="surrogateescape"))
        if found is not None:
            return found.name
    raise CannoliError(f"{trace_dir}: meta.json is damaged and the recorded program cannot be read, so the "
                       f"guest's architecture is unknown; put the program back where it was recorded and index again")


def _remove_stale_temps(trace_dir: Path, meta: dict) -> None:
    """A recorder or index killed while writing a file leaves its temporary;
    it never became a file.  Removed unless that recorder is still running."""
    if tracedir.recorder_alive(meta):
        return
    chunks = trace_dir / tracedir.CHUNKS_NAME
    for stale in [*chunks.glob(".*.tmp"), *chunks.glob("*/.*.tmp")]:
        stale.unlink(missing_ok=True)


def _remove_parts_beyond(trace_dir: Path, n_chunks: int) -> None:
    """Parts of chunks that are not (or no longer) indexed."""
    for table in (*store.BULK, *store.INDEXES):
        for path in store.part_files(trace_dir, table):
            if int(path.stem) >= n_chunks:
                path.unlink(missing_ok=True)


def _recover_layout(trace_dir: Path, meta: dict) -> dict:
    """A recorder that died before finishing leaves QEMU's layout log unread: read it now."""
    from .. import layout_log

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


def _damaged(path: Path, used: int, exc: Exception) -> str:
    reason = exc.reason if isinstance(exc, ChunkError) else str(exc)
    return f"chunk {path.stem} is damaged ({reason}); indexed the {used} chunks before it"


def _pass_a(files, blocks: BlockTable, plan: PositionPlan, events: EventLog, progress) -> _PassA:
    """Side data of every chunk; stops at a damaged one."""
    scan = _PassA(packets=[], versions=set())
    for path in files:
        try:
            chunk = read_chunk_file(path, heavy=False)
            views = chunk.views()
            if len(views) != int(chunk.header["n_packets"]):
                raise ChunkError(path.name, f"holds {len(views)} packets, header says {int(chunk.header['n_packets'])}")
            for k, view in enumerate(views):
                _add_side(view, chunk, k, blocks, plan, events, scan)
        except (ChunkError, ValueError) as exc:
            scan.problem = _damaged(path, scan.chunks, exc)
            break
        scan.versions.add(chunk.version)
        scan.chunks += 1
        progress.advance()
    return scan


def _add_side(view, chunk: Chunk, k: int, blocks: BlockTable, plan: PositionPlan, events: EventLog,
              scan: _PassA) -> None:
    h = view.header
    stream = view.stream
    blocks.add(view.section(F.SEC_BLOCK), view.section(F.SEC_INSN_SIZE), view.section(F.SEC_INSN_BYTES))
    plan.add(h, view.section(F.SEC_EVENT), stream)
    events.add(stream, int(h["pid"]), int(h["tid"]), int(h["packet_seq"]), view.section(F.SEC_EVENT),
               view.section(F.SEC_BLOB), chunk.name)
    scan.packets.append((chunk.seq, k, stream, int(h["exec_first"]), view.counts[F.SEC_EXEC]))


def _finish_tails(files, plan: PositionPlan, scan: _PassA) -> set[int]:
    """Feed the plan the exec ids of what no segment closed: the heavy frames of
    the few packets that hold such execs.  Returns those chunks, which keep their
    heavy frames (the next index reads them again)."""
    wanted = defaultdict(list)
    for seq, k, stream, first, n in scan.packets:
        start, end = plan.open_range(stream)
        if n and first + n > start and first < end:
            wanted[seq].append(k)
    for seq, ks in sorted(wanted.items()):
        chunk = read_chunk_file(files[seq])
        if chunk.heavy_in_store:
            _tails_from_store(chunk, plan)
            continue
        views = chunk.views()
        for k in ks:
            v = views[k]
            plan.add_execs(v.stream, int(v.header["exec_first"]), v.section(F.SEC_EXEC))
    return set(wanted)


def _tails_from_store(chunk: Chunk, plan: PositionPlan) -> None:
    raise CannoliError(f"chunk {chunk.name}: its heavy frame, which the index needs, was dropped; "
                       f"the trace cannot be indexed again")


def _check_free_space(trace_dir: Path, files) -> None:
    """Refuse to start converting when the parts cannot fit, with the numbers."""
    need = 0
    for path in files:
        if not all(read_stamp(store.part_path(trace_dir, t, int(path.stem))) for t in store.BULK):
            need += _store_estimate(path)
    free = shutil.disk_usage(trace_dir).free
    if need and free < need + FREE_SPACE_MARGIN:
        raise CannoliError(f"not enough disk space to index {trace_dir}: the store needs about "
                           f"{_mib(need)} and {_mib(free)} are free; free some space and run cannoli index again")


def _store_estimate(chunk: Path) -> int:
    """Bytes the index will write for this chunk (0 if its header is unreadable:
    pass A names the damage)."""
    try:
        with open(chunk, "rb") as f:
            h = read_chunk_header(f.read(F.CHUNK_HEADER_DTYPE.itemsize), chunk.name)
    except (OSError, ChunkError):
        return 0
    share = STORE_PER_CHUNK_BYTE.get(int(h["version"]), max(STORE_PER_CHUNK_BYTE.values()))
    per_record = STORE_PER_ACCESS * int(h["n_mem"]) + STORE_PER_EXEC * int(h["n_exec"])
    return int(max(chunk.stat().st_size * share, per_record))


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _pass_b(trace_dir: Path, files, ctx: Context, workers: int, progress, keep_heavy: set[int],
            walk: _CallWalk) -> int:
    """Every chunk's store parts; returns how many chunks were converted now.
    A version-3 chunk's heavy frame is dropped once its parts are durable: the
    store is then the one copy of its rows (but chunks in keep_heavy).  Each
    chunk's executions go on to the call walk, in chunk order."""

    def convert(path: Path):
        seq = int(path.stem)
        try:
            return convert_one(path, seq)
        except ChunkError as exc:
            raise _Damaged(seq, exc) from None

    def convert_one(path: Path, seq: int):
        chunk = read_chunk_file(path, heavy=False)
        stamp = part_stamp(chunk)
        done = all(read_stamp(store.part_path(trace_dir, t, seq)) == stamp for t in (*store.BULK, *store.INDEXES))
        if not done and chunk.heavy_in_store:
            raise CannoliError(f"chunk {path.stem}: its rows are in the store, but its parts are missing or "
                               f"damaged; the trace cannot be indexed again")
        if done:
            tables = {t: pq.read_table(store.part_path(trace_dir, t, seq), columns=cols)
                      for t, cols in _CallWalk.COLUMNS.items()}
        else:
            chunk = read_chunk_file(path)
            tables = convert_chunk(chunk, ctx)
            write_parts(trace_dir, seq, tables, stamp)
            for table in (*store.BULK, *store.INDEXES):
                tracedir.fsync_dir(store.store_dir(trace_dir, table))
        if chunk.version >= 3 and not chunk.heavy_in_store and seq not in keep_heavy:
            drop_heavy(path, chunk)
        return int(not done), walk.feeds(chunk.views(), tables["exec"], tables["regs"])

    converted = 0
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for done, feeds in _bounded_map(pool, convert, files, window=workers + 1):
                converted += done
                walk.feed(feeds)
                progress.advance()
    except OSError as exc:
        raise CannoliError(f"writing the store failed ({exc.strerror or exc}); the parts written so far are valid "
                           f"and the previous index is intact: free some space and run cannoli index again") from None
    return converted


class _CallWalk:
    """The calls table (calls.py), walked as pass B hands over each chunk's
    executions, packet by packet, in each thread's order."""

    COLUMNS = {"exec": ["idx", "block_id", "icount"], "regs": ["idx", "tid", "n", "value"]}

    def __init__(self, con, arch: str, plan: PositionPlan, events: EventLog):
        started = time.monotonic()
        self.con = con
        self.walker = calls.CallWalker(arch, calls.BlockCode.from_sections(plan.blocks.rows))
        ev = events.table()
        sigreturns: dict = {}
        for e in ev[(ev["kind"] == F.EV_SYSCALL) & np.isin(ev["v"][:, 0], list(calls.sigreturn_numbers(arch)))]:
            if int(e["seq"]):
                sigreturns.setdefault(int(e["stream"]), []).append(plan.syscall_position(int(e["seq"])))
        self.order = calls.InOrder(self.walker, sigreturns)
        # the stack pointer's register number, where the trace has registers
        sp = guest_arch.get(arch).sp_register
        self.sp_reg = next((n for n, name in enumerate(events.register_names()) if name == sp), None)
        self.seconds = time.monotonic() - started

    def feeds(self, views, exec_table, regs_table) -> list:
        """What the walker needs of a chunk's packets (in pass B's worker threads): each
        packet's own execs are the next rows of the exec part."""
        idx, block, icount = (exec_table[c].to_numpy() for c in ("idx", "block_id", "icount"))
        sp = np.zeros(0, np.uint64), np.zeros(0, np.uint64)
        if self.sp_reg is not None and regs_table.num_rows:
            rows = regs_table.filter(pa.compute.equal(regs_table["n"], self.sp_reg))
            sp_tid, sp_idx, sp_value = (rows[c].to_numpy() for c in ("tid", "idx", "value"))
        out, row = [], 0
        for v in views:
            n = v.counts[F.SEC_EXEC]
            own = n - int(bool(int(v.header["flags"]) & F.PACKET_CONTINUES) and n > 0)
            tid, first = int(v.header["tid"]), int(v.header["exec_first"]) + n - own
            if self.sp_reg is not None and regs_table.num_rows:
                sp = sp_idx[sp_tid == tid], sp_value[sp_tid == tid]
            out.append((v.stream, tid, first, idx[row: row + own], block[row: row + own], icount[row: row + own],
                        *sp))
            row += own
        return out

    def feed(self, feeds) -> None:
        started = time.monotonic()
        for f in feeds:
            self.order.add(*f)
        self._store(self.walker.take())
        self.seconds += time.monotonic() - started

    def _store(self, rows) -> None:
        # rows come in the order frames leave their stacks: end_idx rises, which keeps
        # Trace.stack's row-group pruning tight (docs/schema.md, calls)
        if rows.num_rows:
            self.con.execute("INSERT INTO calls SELECT * FROM rows")

    def finish(self) -> float:
        """The rest of the rows; returns the seconds the walk took in all."""
        started = time.monotonic()
        self._store(self.order.finish())
        return round(self.seconds + time.monotonic() - started, 3)


class _Damaged(Exception):
    def __init__(self, seq: int, error: ChunkError):
        self.seq, self.error = seq, error


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
