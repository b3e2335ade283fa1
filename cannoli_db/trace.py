"""`cannoli_db.Trace`: the Python API over one indexed trace.

    with Trace.open("app.cannoli") as t:
        t.sql("SELECT count(*) FROM mem WHERE is_write").rows
        t.who_wrote("counter", size=8)            # or an int address
        t.memory_at(120_000, 0x4c6f00, 16)        # bytes as known at a position
        t.registers_at(120_000)                   # {"rax": ..., ..., "pc": ...} before that instruction (QEMU >= 9)

The database is opened read-only with external access disabled, so no query
can change the trace (or attach it again for writing).  DuckDB errors become
one-line CannoliErrors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import duckdb

from . import named_queries, tracedir
from .errors import CannoliError
from .indexer import DB_NAME
from .symbolize import Symbolizer

MAX_RANGE = 1 << 20  # bytes: who-wrote and memory_at answer per byte


@dataclass
class Rows:
    """A query's result: column names and rows of Python values."""

    columns: list[str]
    rows: list[tuple]

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def dicts(self) -> list[dict]:
        return [dict(zip(self.columns, row)) for row in self.rows]


@dataclass(frozen=True)
class Write:
    """One write that is the last write before the asked position to some bytes of the asked range."""

    idx: int          # position of the writing instruction
    tid: int
    pc: int
    symbol: str       # pc as symbol+offset
    addr: int         # the write as a whole: first byte,
    size: int         # width in bytes,
    value: int | None  # and value (little-endian)
    first_byte: int   # the part of the asked range it covers, inclusive
    last_byte: int
    bytes: int        # how many bytes of the asked range it is the last write for


@dataclass(frozen=True)
class Memory:
    """Memory [addr, addr + len) as known at a position; unknown bytes are None."""

    addr: int
    at: int
    values: tuple[int | None, ...]

    @property
    def known(self) -> bool:
        return all(v is not None for v in self.values)

    def __bytes__(self) -> bytes:
        if not self.known:
            unknown = sum(v is None for v in self.values)
            raise CannoliError(f"{unknown} of {len(self.values)} bytes at {self.addr:#x} are unknown at position {self.at}")
        return bytes(self.values)

    def hex(self) -> str:
        return " ".join("??" if v is None else f"{v:02x}" for v in self.values)


class Trace:
    def __init__(self, path: Path, con: duckdb.DuckDBPyConnection):
        self.path = path
        self._con = con

    @classmethod
    def open(cls, path) -> Trace:
        path = Path(path)
        db = path / DB_NAME
        if not db.exists():
            tracedir.read_meta(path)
            raise CannoliError(f"{path} has no index yet; build it with: cannoli index {path}")
        try:
            con = duckdb.connect(str(db), read_only=True, config={"enable_external_access": False})
        except duckdb.Error as exc:
            raise CannoliError(f"{db} is damaged ({_first_line(exc)}); rebuild it with: cannoli index {path}") from None
        trace = cls(path, con)
        version = trace.meta.get("schema_version")
        from .schema import SCHEMA_VERSION

        if version != SCHEMA_VERSION:
            con.close()
            raise CannoliError(f"{db} has schema version {version}, this cannoli reads {SCHEMA_VERSION}; "
                               f"rebuild it with: cannoli index {path}")
        return trace

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
        try:
            cursor = self._con.execute(query, params) if params is not None else self._con.execute(query)
            rows = cursor.fetchall()
        except duckdb.Error as exc:
            raise CannoliError(self._explain(exc)) from None
        columns = [d[0] for d in cursor.description] if cursor.description else []
        return Rows(columns, rows)

    def _explain(self, exc: duckdb.Error) -> str:
        if isinstance(exc, duckdb.IOException) or "Corrupt" in str(exc):
            return (f"{self.path / DB_NAME} is damaged ({_first_line(exc)}); "
                    f"rebuild it with: cannoli index {self.path}")
        return _explain(exc)

    def query(self, name: str, **params) -> Rows:
        """Run a named query (see `cannoli query --list`); parameters as text or numbers."""
        named = named_queries.lookup(name)
        return self.sql(named.sql, named.bind({k: str(v) for k, v in params.items()}, self.address))

    @cached_property
    def meta(self) -> dict:
        try:
            return {k: json.loads(v) for k, v in self._con.execute("SELECT key, value FROM meta").fetchall()}
        except (duckdb.Error, ValueError) as exc:
            raise CannoliError(f"{self.path / DB_NAME} is damaged ({_first_line(exc)}); "
                               f"rebuild it with: cannoli index {self.path}") from None

    # -- names -------------------------------------------------------------

    @cached_property
    def symbolizer(self) -> Symbolizer:
        return Symbolizer(self._con)

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

    # -- replay ------------------------------------------------------------

    def replay(self, start: int = 0, end: int | None = None, tid: int | None = None):
        """Steps (cannoli_db.replay.Step) of positions [start, end), optionally of one thread."""
        from . import replay

        end = int(self.meta.get("index_instructions") or 0) if end is None else end
        return replay.steps(self, start, end, tid)

    def analyze(self, analysis, workers: int = 0):
        """Run a cannoli_db.Analysis over the whole trace: per_chunk in worker processes,
        ordered here in trace order; returns analysis.finish()."""
        from .analyze import run

        return run(self, analysis, workers)

    # -- memory ------------------------------------------------------------

    def who_wrote(self, addr: int | str, size: int = 1, before: int | None = None) -> list[Write]:
        """The last write to each byte of [addr, addr + size) at a position < before (default: the end)."""
        start = self._checked_range(addr, size)
        self._check_position(before, "before")
        rows = self.query("who_wrote", addr=start, size=size, **({} if before is None else {"before": before}))
        names = self.symbolizer.names([r["pc"] for r in rows.dicts()]) if rows.rows else []
        return [Write(symbol=name, **r) for r, name in zip(rows.dicts(), names)]

    def memory_at(self, idx: int, addr: int | str, length: int) -> Memory:
        """Memory [addr, addr + length) as the recorded accesses show it at position idx: from the latest
        write or read of each byte before idx (and reads by instruction idx itself).  Bytes that no
        recorded access saw are None, never guessed."""
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
        from . import reexec

        self._check_position(idx, "position")
        reason = self.meta.get("regs_unavailable")
        if reason:
            raise CannoliError(f"{self.path} has no registers: {reason}")
        return reexec.registers_at(self, idx)

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
                             OR EXISTS (SELECT 1 FROM mem_by_addr WHERE addr BETWEEN greatest($a::UBIGINT, 64) - 64
                                        AND $a::UBIGINT + $n - 1)""", {"a": start, "n": size})
        if not mapped.rows[0][0]:
            raise CannoliError(f"address {start:#x} is not in any mapping of the trace; "
                               f"see the address space with: cannoli query {self.path} mmaps_timeline")
        return start

    def _check_position(self, idx: int | None, what: str) -> None:
        end = int(self.meta.get("index_instructions") or 0)
        if idx is not None and not 0 <= idx <= end:
            raise CannoliError(f"{what} {idx} is outside the trace (positions 0 .. {end})")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _explain(exc: duckdb.Error) -> str:
    text = _first_line(exc)
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
