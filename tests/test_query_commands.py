"""`cannoli sql`, `cannoli query` and `cannoli who-wrote` as a user runs them:
formats, stdin, exact numbers, one-line errors, and a trace that no command can change."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import pytest

from .conftest import function_containing, run_cannoli, symbol


@pytest.fixture(scope="module")
def history(guest, recorded):
    trace, _, counted = recorded("history", "4")
    return guest("history"), trace, counted


def test_sql_from_argument_and_stdin_in_every_format(history):
    _, trace, counted = history
    sql = "SELECT count(*) AS n, max(idx) AS last FROM insns"
    as_json = json.loads(run_cannoli("sql", trace, sql, "--format", "json").stdout)
    assert as_json == [{"n": counted, "last": counted - 1}]
    from_stdin = run_cannoli("sql", trace, "--format", "jsonl", input=sql)
    assert [json.loads(line) for line in from_stdin.stdout.splitlines()] == as_json
    rows = list(csv.DictReader(io.StringIO(run_cannoli("sql", trace, sql, "--format", "csv").stdout)))
    assert rows == [{"n": str(counted), "last": str(counted - 1)}]
    table = run_cannoli("sql", trace, sql).stdout
    assert str(counted) in table and "┃" in table


def test_addresses_are_numbers_in_machine_formats_and_hex_in_tables(history):
    program, trace, _ = history
    cell, _ = symbol(program, "cell")
    sql = f"SELECT addr FROM mem WHERE addr = {cell} LIMIT 1"
    assert json.loads(run_cannoli("sql", trace, sql, "--format", "json").stdout) == [{"addr": cell}]
    assert hex(cell) in run_cannoli("sql", trace, sql).stdout


def test_who_wrote_command(history):
    program, trace, _ = history
    cell, _ = symbol(program, "cell")
    proc = run_cannoli("who-wrote", trace, hex(cell + 2), "--size", "2", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert function_containing(program, row["pc"]) == "write_mid" and row["symbol"].startswith("write_mid")
    assert (row["value"], row["size"], row["bytes"]) == (0xBBCC, 2, 2)
    table = run_cannoli("who-wrote", trace, "cell", "--size", "8").stdout
    assert "write_all" in table and "write_low" in table and "write_mid" in table


def test_who_wrote_says_which_bytes_nobody_wrote(history):
    _, trace, _ = history
    first = json.loads(run_cannoli("who-wrote", trace, "cell", "--size", "8", "--format", "json").stdout)
    before = min(r["idx"] for r in first)
    proc = run_cannoli("who-wrote", trace, "cell", "--size", "8", "--before", str(before))
    assert proc.returncode == 0 and "8 of 8 bytes have no recorded write" in proc.stderr


def test_query_list_names_every_query(history):
    proc = run_cannoli("query", "--list", "--format", "json")
    names = {q["name"] for q in json.loads(proc.stdout)}
    assert {"who_wrote", "who_read", "history", "value_at", "strace", "mmaps_timeline", "coverage",
            "hot_blocks", "first_last", "thread_summary"} <= names


@pytest.mark.parametrize("args, message", [
    (["sql", "{trace}", "SELECT * FROM nosuch"], "nosuch does not exist"),
    (["sql", "{trace}", "SELECT nocolumn FROM mem"], "nocolumn"),
    (["sql", "{trace}", "SELEKT 1"], "SQL syntax error"),
    (["sql", "{trace}", "DROP TABLE mem"], "read-only"),
    (["sql", "{trace}", "COPY mem TO '/tmp/cannoli-leak.csv'"], "not allowed"),
    (["query", "{trace}", "no_such_query"], "no query named"),
    (["query", "{trace}", "who_wrote"], "needs -p addr"),
    (["query", "{trace}", "who_wrote", "-p", "addr=cell", "-p", "colour=red"], "no parameter 'colour'"),
    (["query", "{trace}", "hot_blocks", "-p", "limit=ten"], "must be an integer"),
    (["query", "{trace}", "who_wrote", "-p", "addrcell"], "is not key=value"),
    (["who-wrote", "{trace}", "no_such_symbol"], "unknown symbol"),
    (["who-wrote", "{trace}", "0x10"], "not in any mapping"),
    (["who-wrote", "{trace}", "zz!!"], "not an address"),
    (["who-wrote", "{trace}", "cell", "--before", "999999999999"], "outside the trace"),
    (["sql", "{missing}", "SELECT 1"], "no such trace directory"),
])
def test_bad_input_is_one_line_with_nonzero_exit(history, tmp_path, args, message):
    _, trace, _ = history
    argv = [a.format(trace=trace, missing=tmp_path / "missing.cannoli") for a in args]
    proc = run_cannoli(*argv)
    assert proc.returncode != 0
    assert message in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_no_query_command_changes_the_trace(history):
    _, trace, _ = history
    db = trace / "trace.duckdb"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    for sql in ["DELETE FROM mem", "INSERT INTO meta VALUES ('x', '1')", "CREATE TABLE t (a INT)",
                "UPDATE threads SET insns = 0", f"ATTACH '{db}' AS again (READ_WRITE); DELETE FROM again.mem"]:
        assert run_cannoli("sql", trace, sql).returncode != 0, sql
    run_cannoli("query", trace, "who_wrote", "-p", "addr=cell")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
