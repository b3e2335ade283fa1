"""Exports: the trace's tables as Parquet, coverage as drcov, and a thread's
execution as a Tenet trace.  `export(kind, TRACE, OUT)` runs one of them (what
`cannoli export KIND TRACE -o OUT` calls).

* **parquet** -- every table of the index.  `exec`, `mem` and `block_insns`
  are large, so they are written hive-partitioned by thread and position range
  (`exec/tid=4242/span=3/*.parquet`, SPAN positions per range) with row groups
  of ROW_GROUP rows: engines read only the partitions a filter needs.  DuckDB
  writes it with COPY, streaming; nothing is loaded whole.
  `parquet_connection(DIR)` gives the same tables as views over an export;
  `Trace.open_parquet(DIR)` a Trace over them.
* **drcov** -- version 2 with a module table and one 8-byte entry per distinct
  executed block (offset from its module, size, module id), as Lighthouse and
  Cartographer read it.
* **tenet** -- one line per instruction of one thread: the pc register, the
  other registers where they changed, and the memory it read and wrote
  (`rax=0x1,rip=0x401000,mr=0x7ffc1000:0a00,mw=...`).  Registers (QEMU >= 9)
  are the ones known before each instruction (cannoli_db.reexec: the recorded
  block-entry registers carried through the block by re-execution), shown where
  they change; a trace from QEMU 7.2 has only the pc.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import duckdb

from . import arch as guest_arch
from . import schema
from .errors import CannoliError
from .query.database import connect
from .reexec import RegisterChanges
from .replay import check_range

WINDOW = 1 << 20  # positions per Tenet window

SPAN = 1 << 24            # positions per partition of exec and mem
ROW_GROUP = 1 << 20       # rows per Parquet row group
PARTITIONED = {"exec": "idx", "mem": "idx"}
BULK = ("exec", "mem", "regs", "regs_keys")  # views over the trace's own Parquet store
SKIPPED = {"mem_lines", "exec_blocks", "parts"}  # access paths of the index, not data
KINDS = ("parquet", "drcov", "tenet")


def export(kind: str, trace: Path, out: Path, tid: int | None = None) -> str:
    """Export the trace at `trace` as `kind` (KINDS) to `out` (tenet: thread `tid`, default the
    first); returns what was written, e.g. "12 tables, 1,234 rows"."""
    from .query import Trace

    # refused as Trace.open refuses (no index yet, an index of another
    # version) before anything is written
    Trace.open(trace).close()
    if kind == "parquet":
        rows = export_parquet(trace, out)
        return f"{len(rows)} tables, {sum(rows.values()):,} rows"
    if kind == "drcov":
        modules, blocks = export_drcov(trace, out)
        return f"{modules} modules, {blocks:,} blocks"
    if kind == "tenet":
        with Trace.open(trace) as t:
            return f"{export_tenet(t, out, tid):,} instructions"
    raise CannoliError(f"no export kind {kind!r}; the kinds are: {', '.join(KINDS)}")


def _connect(trace: Path, out: Path) -> duckdb.DuckDBPyConnection:
    return connect(trace, writable=(out if out.is_dir() else out.parent,))


def _prepare_out(out: Path, is_dir: bool) -> None:
    if out.exists() and (not is_dir or any(out.iterdir())):
        raise CannoliError(f"{out} already exists; choose another -o or remove it")
    (out if is_dir else out.parent).mkdir(parents=True, exist_ok=True)


def _sql_string(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def export_parquet(trace: Path, out: Path) -> dict[str, int]:
    """Write every table under out/; returns rows per table."""
    out = Path(out)
    _prepare_out(out, is_dir=True)
    rows = {}
    with _connect(trace, out) as con:
        tables = [t for (t,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE NOT temporary").fetchall()
                  if t not in SKIPPED] + list(BULK)
        for table in sorted(tables):
            rows[table] = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            if table in PARTITIONED:
                key = PARTITIONED[table]
                target = _sql_string(out / table)
                con.execute(f"""COPY (SELECT *, {key} // {SPAN} AS span FROM "{table}") TO {target}
                                (FORMAT PARQUET, PARTITION_BY (tid, span), ROW_GROUP_SIZE {ROW_GROUP})""")
            else:
                target = _sql_string(out / f"{table}.parquet")
                con.execute(f'COPY "{table}" TO {target} (FORMAT PARQUET, ROW_GROUP_SIZE {ROW_GROUP})')
    return rows


def parquet_connection(folder: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with each exported table (and the schema's views) over the files."""
    folder = Path(folder)
    if not (folder / "meta.parquet").exists():
        raise CannoliError(f"{folder} is not a Parquet export of a trace (no meta.parquet); "
                           f"make one with: cannoli export parquet TRACE -o {folder}")
    con = duckdb.connect()
    for entry in sorted(folder.iterdir()):
        if entry.suffix == ".parquet":
            con.execute(f'CREATE VIEW "{entry.stem}" AS SELECT * FROM read_parquet({_sql_string(entry)})')
        elif entry.is_dir() and entry.name in PARTITIONED:
            files = _sql_string(entry / "**" / "*.parquet")
            con.execute(f"""CREATE VIEW "{entry.name}" AS SELECT * EXCLUDE (span)
                            REPLACE (CAST(tid AS UINTEGER) AS tid)
                            FROM read_parquet({files}, hive_partitioning = true)""")
    schema.create_macros(con)
    for name, body in schema.VIEWS.items():
        con.execute(f"CREATE VIEW {name} AS {body}")
    return con


def export_drcov(trace: Path, out: Path) -> tuple[int, int]:
    """Write a drcov v2 file; returns (modules, blocks)."""
    out = Path(out)
    _prepare_out(out, is_dir=False)
    with _connect(trace, out) as con:
        modules = con.execute("SELECT start, \"end\", path FROM modules ORDER BY pid, start").fetchall()
        blocks = con.execute("""
            SELECT m.id, (b.pc - m.start)::UINTEGER, b.size::USMALLINT
            FROM (SELECT DISTINCT pc, size FROM blocks WHERE block_id IN (SELECT DISTINCT block_id FROM exec)) b
            JOIN (SELECT row_number() OVER (ORDER BY pid, start) - 1 AS id, start, "end" FROM modules) m
              ON b.pc >= m.start AND b.pc < m."end"
            ORDER BY m.id, b.pc""").fetchall()
    lines = ["DRCOV VERSION: 2", "DRCOV FLAVOR: cannoli-db",
             f"Module Table: version 2, count {len(modules)}",
             "Columns: id, base, end, entry, checksum, timestamp, path"]
    lines += [f"{i:3d}, {start:#018x}, {end:#018x}, 0x0000000000000000, 0x00000000, 0x00000000, {path}"
              for i, (start, end, path) in enumerate(modules)]
    lines.append(f"BB Table: {len(blocks)} bbs")
    with open(out, "wb") as f:
        f.write(("\n".join(lines) + "\n").encode())
        f.write(b"".join(struct.pack("<IHH", offset, size, module) for module, offset, size in blocks))
    return len(modules), len(blocks)


def export_tenet(trace, out: Path, tid: int | None = None) -> int:
    """Write one thread's execution as a Tenet trace; returns the instructions written."""
    out = Path(out)
    _prepare_out(out, is_dir=False)
    if tid is None:
        rows = trace.sql("SELECT tid FROM threads ORDER BY first_idx NULLS LAST LIMIT 1").rows
        if not rows:
            raise CannoliError("the trace has no thread to export")
        tid = rows[0][0]
    register = guest_arch.of_meta(trace.meta, trace.path).pc_register
    total = trace.end
    check_range(trace, 0, total, tid)
    written = 0
    changes = RegisterChanges(trace, tid)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w") as f:
        for lo in range(0, total, WINDOW):
            hi = min(total, lo + WINDOW)
            accesses: dict[int, str] = {}
            for idx, addr, size, is_write, value in trace.accesses(lo, hi, tid):
                if value is not None:
                    width = min(size, 8)
                    data = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little").hex()
                    accesses[idx] = accesses.get(idx, "") + f",{'mw' if is_write else 'mr'}={addr:#x}:{data}"
            changed = {idx: "".join(f"{name}={value:#x}," for name, value in regs)
                       for idx, regs in changes.window(lo, hi).items()}
            lines = [f"{changed.get(idx, '')}{register}={pc:#x}{accesses.get(idx, '')}\n"
                     for idx, _, pc, _, _ in trace.instructions(lo, hi, tid).rows]
            f.writelines(lines)
            written += len(lines)
    os.replace(tmp, out)
    return written
