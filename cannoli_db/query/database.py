"""Opening a trace's database: the one way every reader connects.

trace.duckdb is opened read-only; the bulk tables are temporary views over the
Parquet store (cannoli_db.store), made here with the trace directory's current
path, so a trace can be moved or copied.  DuckDB may read files only under the
store's folder (and write only where an exporter asks), extensions cannot be
loaded, and the configuration is locked afterwards, so no query can change a
trace or reach other files; statements that write files (COPY, EXPORT) are
refused before they run (check_statement).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from .. import schema, store, tracedir
from ..errors import CannoliError

# Statement kinds a query may run on a trace (DuckDB's StatementType names)
ALLOWED_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA", "CALL"}
_DUCK_TYPES = {"uint64": "UBIGINT", "uint32": "UINTEGER", "uint16": "USMALLINT", "uint8": "UTINYINT",
               "bool": "BOOLEAN", "string": "VARCHAR"}


def sql_string(text) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def connect(trace: Path, writable: tuple[Path, ...] = (), threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only connection to TRACE/trace.duckdb with the store's views;
    `writable` folders are where an exporter's own COPY may write."""
    trace = Path(trace)
    db = trace / tracedir.DB_NAME
    config = {"threads": threads} if threads else {}
    try:
        con = duckdb.connect(str(db), read_only=True, config=config)
    except duckdb.Error as exc:
        raise CannoliError(tracedir.damaged(trace, exc)) from None
    folders = [trace.resolve() / tracedir.CHUNKS_NAME, *(Path(w).resolve() for w in writable)]
    con.execute("SET allowed_directories = " + "[" + ", ".join(sql_string(f"{f}/") for f in folders) + "]")
    con.execute("SET enable_progress_bar = false")  # DuckDB prints it on stdout, amid the data
    con.execute("SET enable_external_access = false")
    con.execute("SET parquet_metadata_cache = true")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")
    create_views(con, trace.resolve())
    return con


def create_views(con, trace: Path) -> None:
    """The bulk tables over the store, then schema.VIEWS (temporary objects:
    the database file itself is never written)."""
    for name, columns in store.SCHEMAS.items():
        if name in store.INDEXES:
            continue
        if store.part_files(trace, name):
            body = f"SELECT * FROM read_parquet({sql_string(store.glob(trace, name))})"
        else:  # no rows recorded (e.g. mem of a --no-mem trace): an empty table with the columns
            cols = ", ".join(f"NULL::{_DUCK_TYPES[str(f.type)]} AS {f.name}" for f in columns)
            body = f"SELECT {cols} WHERE false"
        con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS {body}')
    schema.create_macros(con)
    for name, body in schema.VIEWS.items():
        con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS {body}')


def check_statement(con, query: str) -> None:
    """Refuse what would write files or change settings, before it runs."""
    try:
        statements = con.extract_statements(query)
    except duckdb.Error:
        return  # a syntax error: running it explains it
    for statement in statements:
        kind = str(statement.type).rsplit(".", 1)[-1]
        if kind not in ALLOWED_STATEMENTS:
            if kind in ("COPY", "EXPORT"):
                raise CannoliError(f"not allowed on a trace: {kind} writes files (copy rows out with "
                                   f"cannoli sql ... --format csv, or cannoli export)")
            if kind in ("INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "ATTACH", "DETACH"):
                raise CannoliError("queries cannot modify a trace (the database is opened read-only)")
            raise CannoliError(f"not allowed on a trace: {kind} statements (queries may only read)")



