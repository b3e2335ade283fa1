"""`cannoli_db.Trace`: the Python API over one indexed trace.

    with Trace.open("app.cannoli") as t:
        t.sql("SELECT count(*) FROM mem WHERE is_write").rows
        t.who_wrote("counter", size=8)            # or an int address
        t.memory_at(120_000, 0x4c6f00, 16)        # bytes as known at a position (None: at the end)
        t.registers_at(120_000)                   # {"rax": ..., ..., "pc": ...} before that instruction (QEMU >= 9)
        t.stack(120_000)                          # the call stack there, innermost frame first

The database is opened read-only, the bulk tables are views over the Parquet
store, and DuckDB may read nothing but the store's files (query/database.py),
so no query can change the trace or reach other files.  Point questions
(who-wrote, memory_at, registers_at) read only the rows the store's indexes
name.  DuckDB errors become one-line CannoliErrors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Iterable, Iterator, Mapping, Sequence

import duckdb
import numpy as np
import pyarrow as pa

from .. import format as F
from .. import hex_columns, schema, store, tracedir
from ..errors import CannoliError, first_line
from . import named as named_queries
from . import window
from .database import check_statement, connect
from .parts import Parts, tuples
from .symbolize import Symbolizer

MAX_RANGE = 1 << 20  # bytes: who-wrote and memory_at answer per byte
HEX = hex_columns.INFO  # field metadata of an address or raw value (hex in tables)


@dataclass
class Rows:
    """A query's result: column names and rows of Python values.  `hex`: the
    columns that hold addresses or raw values (cannoli_db.hex_columns)."""

    columns: list[str]
    rows: list[tuple]
    query: str | None = field(default=None, repr=False, compare=False)  # the SQL that made them
    known_hex: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def dicts(self) -> list[dict]:
        return [dict(zip(self.columns, row)) for row in self.rows]

    @cached_property
    def hex(self) -> frozenset[str]:
        found = hex_columns.of_sql(self.query, self.columns) if self.query else frozenset()
        return found | self.known_hex

    @classmethod
    def of(cls, kind: type, items: Iterable, columns: Sequence[str] | None = None) -> Rows:
        """Rows of dataclass instances: `columns` (fields or properties; default: kind.COLUMNS,
        else every field), hex where the field is marked."""
        columns = list(columns or getattr(kind, "COLUMNS", None) or [f.name for f in fields(kind)])
        return cls(columns, [tuple(getattr(item, c) for c in columns) for item in items],
                   known_hex=hex_columns.of_dataclass(kind) & set(columns))


@dataclass(frozen=True)
class Write:
    """One write that is the last write before the asked position to some bytes of the asked range."""

    idx: int          # position of the writing instruction
    tid: int
    pc: int = field(metadata=HEX)
    symbol: str       # pc as symbol+offset
    addr: int = field(metadata=HEX)  # the write as a whole: first byte,
    size: int         # width in bytes,
    value: int | None = field(metadata=HEX)  # and value (little-endian)
    first_byte: int = field(metadata=HEX)  # the part of the asked range it covers, inclusive
    last_byte: int = field(metadata=HEX)
    bytes: int        # how many bytes of the asked range it is the last write for
    line: str | None = None  # pc as source file:line, where the module's DWARF says
    stack: str | None = None  # who_wrote(stack=True): the callers, `caller < its caller < ...`


class Writes(list):
    """Trace.who_wrote's answer: the Writes, and the question (size, before, stack)."""

    def __init__(self, writes: Iterable[Write], size: int, before: int | None, stack: bool = False):
        super().__init__(writes)
        self.size, self.before, self.stack = size, before, stack

    @property
    def unwritten(self) -> int:
        """Bytes of the range that no recorded write before the position wrote."""
        return self.size - sum(w.bytes for w in self)

    def unwritten_note(self) -> str | None:
        """One line saying how many bytes nobody wrote, or None when every byte has a writer."""
        if not self.unwritten:
            return None
        where = "the end of the trace" if self.before is None else f"position {self.before}"
        return f"{self.unwritten} of {self.size} bytes have no recorded write before {where}"

    def rows(self) -> Rows:
        columns = [f.name for f in fields(Write) if self.stack or f.name != "stack"]
        return Rows.of(Write, self, columns)


@dataclass(frozen=True)
class Frame:
    """One frame of a call stack at a position (Trace.stack), innermost first."""

    COLUMNS: ClassVar = ("level", "pc", "symbol", "source", "kind", "call_idx", "caller_pc", "entry")

    level: int              # 0: the innermost frame, the one running the position
    pc: int = field(metadata=HEX)  # where the frame is: the instruction at the position (level 0), else its call site
    symbol: str             # pc as symbol+offset
    file: str | None        # pc's source file and line, where the module has DWARF line information
    line: int | None
    kind: str               # "call"; "signal": a handler the signal entered; "start": the thread's first frame
    call_idx: int | None    # the call that entered the frame (signal: the last position before the handler)
    caller_pc: int | None = field(metadata=HEX)  # that call instruction (signal: the interrupted instruction)
    entry: int | None = field(metadata=HEX)  # where that call went: the function (or handler) entered

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}" if self.file else ""


@dataclass(frozen=True)
class Memory:
    """Memory [addr, addr + len) as known at a position; unknown bytes are None."""

    addr: int
    at: int
    values: tuple[int | None, ...]

    @property
    def known(self) -> bool:
        return all(v is not None for v in self.values)

    def unknown_note(self) -> str | None:
        """One line saying how many bytes no recorded access saw, or None when all are known."""
        unknown = sum(v is None for v in self.values)
        if not unknown:
            return None
        return f"{unknown} of {len(self.values)} bytes at {self.addr:#x} are unknown at position {self.at}"

    def __bytes__(self) -> bytes:
        if not self.known:
            raise CannoliError(self.unknown_note())
        return bytes(self.values)

    def hex(self) -> str:
        return " ".join("??" if v is None else f"{v:02x}" for v in self.values)

    def rows(self) -> Rows:
        """One row per byte: its address and value (None: unknown)."""
        return Rows(["addr", "value"], [(self.addr + k, v) for k, v in enumerate(self.values)],
                    known_hex=frozenset({"addr", "value"}))

    def as_dict(self) -> dict:
        return {"addr": self.addr, "at": self.at, "bytes": list(self.values)}


_HERE_SCHEMA = pa.schema([("idx", pa.uint64()), ("tid", pa.uint32()), ("pc", pa.uint64()), ("block_id", pa.uint32()),
                          ("n", pa.uint16())])


class Trace:
    def __init__(self, path: Path, con: duckdb.DuckDBPyConnection):
        self.path = Path(path)
        self._con = con
        self.parts: Parts | None = Parts(self.path)

    @classmethod
    def open(cls, path) -> Trace:
        path = Path(path)
        db = path / tracedir.DB_NAME
        if not db.exists():
            tracedir.read_meta(path)
            raise CannoliError(f"{path} has no index yet; build it with: cannoli index {path}")
        trace = cls(path, connect(path))
        trace.check_version()
        return trace

    @classmethod
    def open_parquet(cls, folder) -> Trace:
        """A Trace over a Parquet export (`cannoli export parquet`): the same tables and views,
        in an in-memory DuckDB, for sql and named queries."""
        from ..export import parquet_connection

        trace = cls(folder, parquet_connection(folder))
        trace.parts = None
        return trace

    def check_version(self) -> None:
        """An index an older cannoli built is refused: its tables mean other things."""
        meta = self.meta
        if isinstance(meta.get("format_version"), int) and meta["format_version"] not in F.INDEXABLE_VERSIONS:
            self._con.close()
            raise CannoliError(tracedir.older_format(self.path, meta["format_version"]))
        if meta.get("schema_version") != schema.SCHEMA_VERSION or meta.get("store_version") != store.STORE_VERSION:
            self._con.close()
            raise CannoliError(f"{self.path} was indexed by another version of cannoli (schema "
                               f"{meta.get('schema_version')}, this one reads {schema.SCHEMA_VERSION}); "
                               f"{tracedir.rebuild_hint(self.path)}")

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Trace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- SQL ---------------------------------------------------------------

    def sql(self, query: str, params: Sequence | Mapping | None = None) -> Rows:
        """Run SQL against the trace's tables (read-only)."""
        if not query.strip():
            raise CannoliError("the query is empty; pass SQL as an argument or on stdin")
        check_statement(self._con, query)
        try:
            cursor = self._con.execute(query, params) if params is not None else self._con.execute(query)
            rows = cursor.fetchall()
        except duckdb.Error as exc:
            raise CannoliError(self._explain(exc)) from None
        columns = [d[0] for d in cursor.description] if cursor.description else []
        return Rows(columns, rows, query=query)

    def _explain(self, exc: duckdb.Error) -> str:
        if isinstance(exc, duckdb.IOException) or "Corrupt" in str(exc):
            return self.damaged(exc)
        return _explain(exc)

    def damaged(self, exc: Exception) -> str:
        return tracedir.damaged(self.path, exc)

    def store_rows(self, table: str, lo: int, hi: int, columns: Sequence[str],
                   tid: int | None = None) -> pa.Table:
        """The rows of a store table (exec, mem, regs) at positions [lo, hi), of
        one thread or all, in position order (a position's rows in the order
        recorded).  Reads only the row groups whose positions meet the range
        (the `parts` index) and keeps them decoded for the next call: a step
        through the trace costs no scan."""
        if self.parts is None:  # a Parquet export has no parts index: DuckDB filters its files
            return self._con.sql(
                f'SELECT {", ".join(columns)} FROM "{table}" WHERE idx >= $lo AND idx < $hi '
                f"AND ($tid IS NULL OR tid = $tid) ORDER BY idx", params={"lo": lo, "hi": hi, "tid": tid}).to_arrow_table()
        groups = self._con.execute(
            "SELECT part, row_group FROM parts WHERE tbl = $tbl AND idx_max >= $lo AND idx_min < $hi "
            "ORDER BY part, row_group", {"tbl": table, "lo": lo, "hi": hi}).fetchall()
        wanted = list(dict.fromkeys(["idx", "tid", *columns]))
        if not groups:
            return store.SCHEMAS[table].empty_table().select(list(columns))
        data = pa.concat_tables([self.parts.group(table, part, g, wanted) for part, g in groups])
        idx = data["idx"].to_numpy()
        keep = (idx >= lo) & (idx < hi)
        if tid is not None:
            keep &= data["tid"].to_numpy() == tid
        data, idx = data.filter(keep), idx[keep]
        if len(idx) > 1 and not (idx[1:] >= idx[:-1]).all():  # threads' packets interleave
            data = data.take(np.argsort(idx, kind="stable"))
        return data.select(list(columns))

    def instructions(self, lo: int, hi: int, tid: int | None = None) -> Rows:
        """(idx, tid, pc, block_id, n) of each instruction at positions [lo, hi),
        in order: the `insns` view's rows, read through store_rows."""
        blocks = self.store_rows("exec", max(lo, F.MAX_BLOCK_INSNS) - F.MAX_BLOCK_INSNS, hi,
                                 ["idx", "tid", "block_id", "icount"], tid)
        return self.sql_over({"exec_window": blocks}, f"""
            SELECT idx, tid, pc, block_id, n FROM ({schema.insns_select('exec_window', '$lo', '$hi')})
            ORDER BY idx""", {"lo": lo, "hi": hi})

    def accesses(self, lo: int, hi: int, tid: int | None = None) -> list[tuple]:
        """(idx, addr, size, is_write, value) of each memory access at positions
        [lo, hi), in order, read through store_rows."""
        return tuples(self.store_rows("mem", lo, hi, ["idx", "addr", "size", "is_write", "value"], tid))

    def query(self, name: str, **params) -> Rows:
        """Run a named query (see `cannoli query --list`); parameters as text or numbers."""
        named = named_queries.lookup(name)
        bound = named.bind({k: str(v) for k, v in params.items()}, self.address)
        if not named.window:
            return self.sql(named.sql, bound)
        if named.window == "registers":
            return self.sql_over(self._register_window(bound["at"]), named.sql, bound)
        return self.sql_over({"mem_window": self._window(named.window, bound)}, named.sql, bound)

    def _register_window(self, at: int) -> dict[str, pa.Table]:
        """What `window: registers` queries read (query/named.py)."""
        here = self.instructions(at, at + 1)
        tid, block_start = (here.rows[0][1], at - here.rows[0][4]) if here.rows else (None, at)
        lo = max(at, schema.KEY_REACH) - schema.KEY_REACH
        keys = self.store_rows("regs_keys", lo, at + 1, ["idx", "tid", "n", "value"], tid)
        # the query starts from the latest keyframe at or before the block: the
        # changes before it are not read (a segment is often a few thousand
        # positions, the reach 2^19)
        key_idx = keys["idx"].to_numpy()
        key_idx = key_idx[key_idx <= block_start]
        changes_from = int(key_idx.max()) if len(key_idx) else lo
        return {"here_window": pa.Table.from_pylist(here.dicts(), schema=_HERE_SCHEMA),
                "regs_window": self.store_rows("regs", changes_from, at + 1, ["idx", "tid", "n", "value"], tid),
                "regs_keys_window": keys}

    def sql_over(self, relations: Mapping, query: str, params: Sequence | Mapping | None = None) -> Rows:
        """sql() with Arrow tables (or DataFrames) readable by name for this one query."""
        for name, data in relations.items():
            self._con.register(name, data)
        try:
            return self.sql(query, params)
        finally:
            for name in relations:
                self._con.unregister(name)

    def _window(self, kind: str, p: dict):
        """The accesses a memory query needs (query/window.py), by the query's `window:` header."""
        if self.parts is None:
            raise CannoliError(f"{self.path} is a Parquet export, which has no address index: ask the trace "
                               f"directory itself (or use SQL over mem)")
        lo = p["addr"]
        hi = lo + p.get("size", 1) - 1
        if kind == "latest writes":
            return window.latest(self._con, self.parts, lo, hi, p.get("before"), writes_only=True)
        if kind == "latest accesses":
            return window.latest(self._con, self.parts, lo, hi, p.get("at"), writes_only=False)
        reads = kind == "earliest reads"
        return window.earliest(self._con, self.parts, lo, hi, p.get("from") or 0, p.get("to"), reads,
                               p.get("limit") or 1000)

    @cached_property
    def meta(self) -> dict:
        try:
            return {k: json.loads(v) for k, v in self._con.execute("SELECT key, value FROM meta").fetchall()}
        except (duckdb.Error, ValueError) as exc:
            raise CannoliError(self.damaged(exc)) from None

    @property
    def end(self) -> int:
        """The number of positions: the trace's instructions are 0 .. end - 1."""
        return int(self.meta.get("index_instructions") or 0)

    # -- names -------------------------------------------------------------

    @cached_property
    def symbolizer(self) -> Symbolizer:
        return Symbolizer(self._con, self.meta.get("sysroot"))

    def address(self, where: int | str) -> int:
        """An address from an int, hex/decimal text, or `[module!]symbol[+offset]`."""
        if isinstance(where, int):
            if not 0 <= where < 1 << 64:
                raise CannoliError(f"address {where} is outside 0 .. 2^64-1")
            return where
        return self.symbolizer.address(where)

    def symbol(self, pc: int | None) -> str:
        """`symbol+0xoff` for an address (or `module+0xoff`, or hex)."""
        return self.symbolizer.name(pc)

    def line(self, pc: int | None) -> tuple[str, int] | None:
        """(source file, line) of an address, from its module's DWARF (None where there is none)."""
        return self.symbolizer.line(pc)

    # -- replay ------------------------------------------------------------

    def positions(self, span: str) -> tuple[int, int]:
        """(start, end) of a range written START:END, as `cannoli replay --range` takes it
        (cannoli_db.replay.parse_range): `1000:2000`, `main:+200`, `-5000:`, `:`."""
        from .. import replay

        return replay.parse_range(self, span)

    def replay(self, start: int = 0, end: int | None = None, tid: int | None = None, *, span: str | None = None):
        """Steps (cannoli_db.replay.Step) of positions [start, end) -- or of `span`, a START:END
        text (Trace.positions) -- optionally of one thread."""
        from .. import replay

        if span is not None:
            start, end = self.positions(span)
        return replay.steps(self, start, self.end if end is None else end, tid)

    def analyze(self, analysis, workers: int = 0):
        """Run a cannoli_db.Analysis over the whole trace: per_span in worker processes,
        ordered here in trace order; returns analysis.finish()."""
        from ..analyze import run

        return run(self, analysis, workers)

    # -- memory ------------------------------------------------------------

    def who_wrote(self, addr: int | str, size: int = 1, before: int | None = None, stack: bool = False) -> Writes:
        """The last write to each byte of [addr, addr + size) at a position < before (default: the end);
        `stack`: with each writer's callers (Write.stack)."""
        start = self._checked_range(addr, size)
        self._check_position(before, "before")
        rows = self.query("who_wrote", addr=start, size=size, **({} if before is None else {"before": before}))
        sym = self.symbolizer
        writes = []
        for r in rows.dicts():
            space = sym.space(r["tid"], r["idx"])
            writes.append(Write(symbol=sym.name(r["pc"], space), line=sym.locations([r["pc"]], space)[0], **r))
        if stack:
            writes = [replace(w, stack=" < ".join(f.symbol for f in self.stack(w.idx, w.tid)[1:])) for w in writes]
        return Writes(writes, size, before, stack)

    def memory_at(self, idx: int | None, addr: int | str, length: int) -> Memory:
        """Memory [addr, addr + length) as the recorded accesses show it at position idx (None: the end
        of the trace): from the latest write or read of each byte before idx (and reads by instruction
        idx itself).  Bytes that no recorded access saw are None, never guessed."""
        idx = self.end if idx is None else idx
        start = self._checked_range(addr, length)
        self._check_position(idx, "position")
        rows = self.query("value_at", addr=start, size=length, at=idx)
        return Memory(start, idx, tuple(r[1] for r in rows.rows))

    # -- registers ---------------------------------------------------------

    def registers_at(self, idx: int) -> dict[str, int]:
        """The registers of the thread that ran position idx, exactly as they were before instruction
        idx ran, and "pc": its pc.  They come from the registers recorded at the entry of the block
        holding idx, carried through the block's instructions before idx by re-executing them with
        the recorded memory values (cannoli_db.reexec).  Registers that are unknown there (never
        recorded, or computed from what was not recorded) are absent.  A trace from a QEMU without
        register access (7.2 - 8.2) raises a CannoliError saying why."""
        from .. import reexec

        self._check_position(idx, "position")
        reason = self.meta.get("regs_unavailable")
        if reason:
            raise CannoliError(f"{self.path} has no registers: {reason}")
        return reexec.registers_at(self, idx)

    # -- calls ---------------------------------------------------------------

    def stack(self, idx: int, tid: int | None = None) -> list[Frame]:
        """The call stack at position idx, innermost frame first, from the `calls` table: of the thread
        that ran idx, or of thread `tid` as it was at its latest instruction at or before idx."""
        self._check_position(idx, "position")
        at, tid, pc = self._last_instruction(idx, tid)
        open_frames = self.sql("""SELECT call_idx, kind, caller_pc, callee_pc FROM calls
                                  WHERE tid = $tid AND call_idx < $at AND end_idx >= $at
                                  ORDER BY depth DESC""", {"tid": tid, "at": at}).rows
        pcs = [pc] + [caller for _, _, caller, _ in open_frames]
        space = self.symbolizer.space(tid, at)
        names = self.symbolizer.names(pcs, space)
        calls = open_frames + [(None, "start", None, None)]
        frames = []
        for level, (pc, name, (call_idx, kind, caller, entry)) in enumerate(zip(pcs, names, calls)):
            source = self.symbolizer.line(pc, space)
            frames.append(Frame(level, pc, name, source[0] if source else None, source[1] if source else None,
                                kind, call_idx, caller, entry))
        return frames

    def _last_instruction(self, idx: int, tid: int | None) -> tuple[int, int, int]:
        """(position, thread, pc) of the instruction at idx, or of thread tid's latest one at or before idx."""
        if tid is None:
            rows = self.instructions(idx, idx + 1).rows
            if not rows:
                raise CannoliError(f"no instruction ran at position {idx}")
            return rows[0][:3]
        window = 1 << 16
        while True:
            # exec is stored about in position order: a window of positions reads few row groups
            low = max(idx - window, 0)
            rows = self.sql("""SELECT least($at::UBIGINT, e.idx + e.icount - 1) AS at, e.tid, bi.pc FROM exec e
                               JOIN block_insns bi ON bi.block_id = e.block_id
                                AND bi.n = least($at::UBIGINT, e.idx + e.icount - 1) - e.idx
                               WHERE e.tid = $tid AND e.idx <= $at::UBIGINT AND e.idx >= $low::UBIGINT
                               ORDER BY e.idx DESC LIMIT 1""", {"at": idx, "tid": tid, "low": low}).rows
            if rows:
                return rows[0]
            if low == 0:
                raise CannoliError(f"thread {tid} ran no instruction at or before position {idx}; "
                                   f"see the threads with: cannoli query {self.path} thread_summary")
            window *= 8

    def _checked_range(self, addr: int | str, size: int) -> int:
        start = self.address(addr)
        if not 1 <= size <= MAX_RANGE:
            raise CannoliError(f"size must be 1 .. {MAX_RANGE} bytes, not {size}")
        if start + size > 1 << 64:
            raise CannoliError(f"range {start:#x} + {size} runs past the end of the address space")
        if not self.meta.get("record_mem", True):
            raise CannoliError(f"{self.path} was recorded with --no-mem: it has no memory accesses to search")
        # mapped at some point, or touched by the guest (the initial stack is not in mmaps)
        mapped = self.sql("""SELECT EXISTS (SELECT 1 FROM mmaps WHERE kind <> 'munmap'
                                            AND start < ($a::UBIGINT + $n) AND "end" > $a::UBIGINT)
                             OR EXISTS (SELECT 1 FROM mem_lines WHERE line BETWEEN $a::UBIGINT // 64
                                        AND ($a::UBIGINT + $n - 1) // 64)""", {"a": start, "n": size})
        if not mapped.rows[0][0]:
            raise CannoliError(f"address {start:#x} is not in any mapping of the trace; "
                               f"see the address space with: cannoli query {self.path} mmaps_timeline")
        return start

    def _check_position(self, idx: int | None, what: str) -> None:
        end = self.end
        if idx is not None and not 0 <= idx <= end:
            raise CannoliError(f"{what} {idx} is outside the trace (positions 0 .. {end})")


def _explain(exc: duckdb.Error) -> str:
    text = first_line(exc)
    if "read-only mode" in text or "read only" in text.lower():
        return "queries cannot modify a trace (the database is opened read-only)"
    if isinstance(exc, duckdb.ParserException):
        return f"SQL syntax error: {text.removeprefix('Parser Error: ')}"
    if isinstance(exc, duckdb.CatalogException):
        return f"{text.removeprefix('Catalog Error: ')} (list the tables with: SHOW TABLES; see docs/schema.md)"
    if isinstance(exc, duckdb.BinderException):
        return f"{text.removeprefix('Binder Error: ')} (see the columns with: DESCRIBE <table>; docs/schema.md)"
    if isinstance(exc, duckdb.PermissionException):
        return f"not allowed on a trace: {text.removeprefix('Permission Error: ')}"
    return text
