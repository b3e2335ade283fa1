"""`--format` (cannoli_db/output.py) as every data command writes it: the machine formats
carry the same rows, json is what json.dump writes, a table is for people, long
answers stream."""

from __future__ import annotations

import csv
import io
import json

import pytest

from cannoli_db import output

from .conftest import run_cannoli


@pytest.fixture(scope="module")
def history(guest, recorded):
    trace, _, _ = recorded("history", "3")
    return guest("history"), trace


ROW_COMMANDS = {
    "sql": ["sql", "{trace}", "SELECT idx, arg1, name, ret FROM syscalls ORDER BY idx"],
    "query": ["query", "{trace}", "strace"],
    "query --list": ["query", "--list"],
    "who-wrote": ["who-wrote", "{trace}", "cell", "--size", "8"],
    "stack": ["stack", "{trace}", "--at", "{at}"],
    "replay": ["replay", "{trace}", "--range", "write_low:+6"],
}


def run(history, args, fmt):
    _, trace = history
    at = 5000  # inside __libc_start_main's callees: a stack of a few frames
    proc = run_cannoli(*[a.format(trace=trace, at=at) for a in args], "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def as_text(value) -> str:
    """What a csv field holds for a JSON value."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


@pytest.mark.parametrize("command", sorted(ROW_COMMANDS))
def test_csv_jsonl_and_json_carry_the_same_rows(history, command):
    args = ROW_COMMANDS[command]
    rows = [json.loads(line) for line in run(history, args, "jsonl").splitlines()]
    assert rows, "the command answered nothing"
    if command != "replay":  # replay's json is its jsonl until the next release
        assert json.loads(run(history, args, "json")) == rows
    table = list(csv.reader(io.StringIO(run(history, args, "csv"))))
    assert table[0] == list(rows[0]) and table[1:] == [[as_text(v) for v in r.values()] for r in rows]
    text = run(history, args, "table")
    assert all(name in text.splitlines()[1] for name in rows[0])  # the header row names every column


def test_record_commands_write_json_as_one_object_and_rows_otherwise(history):
    program, trace = history
    info = json.loads(run_cannoli("info", trace, "--format", "json").stdout)
    rows = [json.loads(line) for line in run_cannoli("info", trace, "--format", "jsonl").stdout.splitlines()]
    assert {r["item"]: r["detail"] for r in rows} == info and info["program"].endswith("history 3")


def test_json_is_what_json_dump_writes(capsys):
    rows = [(1, "a\nb", None, b"\x00\xff"), (2, "c", 3.5, b"")]
    output.write_rows(["n", "s", "x", "raw"], iter(rows), "json")
    expected = [{"n": n, "s": s, "x": x, "raw": raw.hex()} for n, s, x, raw in rows]
    assert capsys.readouterr().out == json.dumps(expected, indent=1) + "\n"
    output.write_rows(["n"], iter([]), "json")
    assert capsys.readouterr().out == "[]\n"


def test_a_long_table_is_written_in_parts_and_keeps_every_row(capsys, monkeypatch):
    monkeypatch.setattr(output, "TABLE_ROWS", 7)
    output.write_rows(["addr", "n"], ((0x1000 + k, k) for k in range(30)), "table", hex={"addr"})
    cells = [[c.strip() for c in line.strip("│").split("│")] for line in capsys.readouterr().out.splitlines()
             if line.startswith("│")]
    assert cells == [[hex(0x1000 + k), str(k)] for k in range(30)]


def test_views_are_the_commands_own_formats(capsys):
    output.write_rows(["n"], [(1,)], "text", views={"text": lambda: iter(["one", "two"])})
    assert capsys.readouterr().out == "one\ntwo\n"
