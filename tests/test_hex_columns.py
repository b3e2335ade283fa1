"""Which columns tables show in hex (cannoli_db/hex_columns.py): marked once where a
column is defined, followed through a query's parse tree.  The truths are the
schema's own definitions and what each SQL expression means."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from sqlalchemy import Integer

from cannoli_db import hex_columns, schema, store
from cannoli_db.query import Frame, Write
from cannoli_db.replay import Step

from .conftest import run_cannoli, symbol


def integer_columns():
    """(table, column, marked) of every integer column of trace.duckdb's tables and of the store."""
    for table in schema.metadata.tables.values():
        for c in table.columns:
            if isinstance(c.type, Integer):
                yield table.name, c.name, bool(c.info.get(hex_columns.MARK))
    for name, fields in store.SCHEMAS.items():
        for f in fields:
            if pa.types.is_integer(f.type):
                yield name, f.name, bool((f.metadata or {}).get(hex_columns.ARROW_KEY))


def test_a_column_name_has_one_kind_across_the_schema():
    """What lets a name alone decide (SELECT *): no integer column is an address in one table and a
    count in another."""
    kinds: dict[str, set[bool]] = {}
    for _, name, marked in integer_columns():
        kinds.setdefault(name, set()).add(marked)
    assert {name for name, seen in kinds.items() if len(seen) > 1} == set()


def test_the_marked_columns_are_the_addresses_and_values():
    marked = {(t, c) for t, c, m in integer_columns() if m}
    assert {("mem", "addr"), ("mem", "value"), ("mem", "pc"), ("exec", "pc"), ("blocks", "pc"),
            ("regs", "value"), ("mmaps", "start"), ("mmaps", "end"), ("symbols", "addr"),
            ("calls", "caller_pc"), ("syscalls", "arg0")} <= marked
    assert not {c for _, c in marked} & {"idx", "tid", "pid", "size", "n", "icount", "insns", "call_idx", "prot"}


@pytest.mark.parametrize("sql, columns, addresses", [
    ("SELECT addr, size FROM mem", ["addr", "size"], {"addr"}),
    ("SELECT addr AS where_, count(*) AS addr FROM mem GROUP BY 1", ["where_", "addr"], {"where_"}),
    ('SELECT start + 16 AS p, "end" - start AS length, "end" - 1 AS last FROM mmaps',
     ["p", "length", "last"], {"p", "last"}),  # a pointer plus an offset is one; a difference is a length
    ("SELECT max(pc), min(idx), count(pc) FROM exec", ["max(pc)", "min(idx)", "count(pc)"], {"max(pc)"}),
    ("SELECT CAST(value AS UTINYINT) AS v FROM regs", ["v"], {"v"}),
    ("SELECT * FROM mem", ["idx", "tid", "pc", "addr", "size", "is_write", "value"], {"pc", "addr", "value"}),
    ("WITH w AS (SELECT addr AS a FROM mem) SELECT x.a AS b FROM (SELECT a FROM w) x", ["b"], {"b"}),
    ("SELECT pc FROM exec UNION ALL SELECT idx FROM exec", ["pc"], {"pc"}),  # a union's names: its first side
    ("SELECT hex(pc) AS pc, $addr::UBIGINT AS q FROM exec", ["pc", "q"], set()),  # text; a parameter
    ("DESCRIBE mem", ["column_name", "column_type"], set()),  # not a SELECT: names decide
    ("SELEKT addr", ["addr"], {"addr"}),  # unparseable: names decide
])
def test_result_columns_from_the_parse_tree(sql, columns, addresses):
    assert hex_columns.of_sql(sql, columns) == addresses


def test_answer_fields_are_marked_on_the_dataclasses():
    assert hex_columns.of_dataclass(Write) == {"pc", "addr", "value", "first_byte", "last_byte"}
    assert hex_columns.of_dataclass(Frame) == {"pc", "caller_pc", "entry"}
    assert hex_columns.of_dataclass(Step) == {"pc"}


def table_rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("│").split("│")] for line in text.splitlines()
            if line.startswith("│")]


def test_tables_show_addresses_in_hex_by_kind_not_by_name(guest, recorded):
    program = guest("history")
    trace, _, _ = recorded("history", "3")
    cell, _ = symbol(program, "cell")
    sql = f"SELECT addr AS where_, count(*) AS addr, min(idx) AS first FROM mem WHERE addr = {cell} GROUP BY 1"
    (row,) = table_rows(run_cannoli("sql", trace, sql).stdout)
    (exact,) = [list(r.values()) for r in json.loads(run_cannoli("sql", trace, sql, "--format", "json").stdout)]
    assert row == [hex(cell), str(exact[1]), str(exact[2])]
    # a named query's computed columns: who_wrote's first_byte/last_byte are addresses (addr + k)
    table = table_rows(run_cannoli("query", trace, "who_wrote", "-p", "addr=cell", "-p", "size=8").stdout)
    assert {(r[6], r[7]) for r in table} == {(hex(cell), hex(cell)), (hex(cell + 1), hex(cell + 7)),
                                           (hex(cell + 2), hex(cell + 3))}
