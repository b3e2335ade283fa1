"""Named queries (queries/**/*.sql): headers, and each query's output on a recorded
guest whose behaviour is known from its source, its ELF symbols, its stdout,
QEMU's -strace, or the independent instruction counter."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import capstone
import pytest
from elftools.elf.elffile import ELFFile

from cannoli_db import Trace
from cannoli_db.query import named as named_queries

from .conftest import function_containing, run_cannoli, symbol

TIMES = 37  # read_cell calls in the history guest


@pytest.fixture(scope="module")
def history(guest, recorded):
    program = guest("history")
    trace, stdout, counted = recorded("history", str(TIMES))
    assert "cell=11111111bbcc11aa" in stdout
    return program, trace, counted


def run_query(trace, name, *params):
    proc = run_cannoli("query", trace, name, *[a for p in params for a in ("-p", p)], "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_every_query_has_a_complete_header_and_uses_exactly_its_parameters():
    catalog = named_queries.catalog()
    assert len(catalog) >= 10
    for query in catalog.values():
        assert query.purpose and query.columns and query.example.startswith("cannoli query ")
        assert f" {query.name}" in query.example
        used = set(re.findall(r"\$(\w+)", query.sql))
        assert used == {p.name for p in query.params}, query.name
    files = {p.stem for p in Path(named_queries.__file__).parents[2].joinpath("queries").glob("*/*.sql")}
    assert files == set(catalog), "each named query is the .sql file of its name"


def test_who_wrote_names_the_last_writer_of_each_byte(history):
    program, trace, _ = history
    cell, _ = symbol(program, "cell")
    rows = run_query(trace, "who_wrote", "addr=cell", "size=8")
    by_function = {function_containing(program, r["pc"]): r for r in rows}
    assert set(by_function) == {"write_all", "write_low", "write_mid"}
    assert (by_function["write_low"]["first_byte"], by_function["write_low"]["bytes"]) == (cell, 1)
    assert by_function["write_low"]["value"] == 0xAA and by_function["write_low"]["size"] == 1
    assert (by_function["write_mid"]["first_byte"], by_function["write_mid"]["last_byte"]) == (cell + 2, cell + 3)
    assert by_function["write_mid"]["value"] == 0xBBCC
    # write_all still owns bytes 1 and 4..7
    assert by_function["write_all"]["bytes"] == 5 and by_function["write_all"]["value"] == 0x1111111111111111


def test_who_wrote_one_byte_inside_a_wider_store_and_before_a_position(history):
    program, trace, _ = history
    rows = run_query(trace, "who_wrote", "addr=cell+5")
    assert [function_containing(program, r["pc"]) for r in rows] == ["write_all"]
    assert rows[0]["addr"] == symbol(program, "cell")[0] and rows[0]["size"] == 8
    # before write_mid ran, bytes 2-3 were last written by write_all
    mid = run_query(trace, "who_wrote", "addr=cell+2", "size=2")[0]["idx"]
    earlier = run_query(trace, "who_wrote", "addr=cell+2", "size=2", f"before={mid}")
    assert [function_containing(program, r["pc"]) for r in earlier] == ["write_all"]
    first = earlier[0]["idx"]
    assert run_query(trace, "who_wrote", "addr=cell", "size=8", f"before={first}") == []


def test_who_read_and_history_follow_the_source(history):
    program, trace, _ = history
    reads = run_query(trace, "who_read", "addr=cell", "size=8")
    readers = [function_containing(program, r["pc"]) for r in reads]
    assert readers.count("read_cell") == TIMES and set(readers) <= {"read_cell", "main"}
    assert all(r["value"] == 0x11111111BBCC11AA for r in reads)
    events = run_query(trace, "history", "addr=cell", "size=8")
    assert [(e["kind"], function_containing(program, e["pc"])) for e in events[:4]] == [
        ("write", "write_all"), ("write", "write_low"), ("write", "write_mid"), ("read", "read_cell")]
    assert [e["idx"] for e in events] == sorted(e["idx"] for e in events)


def test_value_at_reconstructs_bytes_and_reports_unknown_ones(history):
    program, trace, _ = history
    cell, _ = symbol(program, "cell")
    writes = run_query(trace, "history", "addr=cell", "size=8")
    all_idx, low_idx = writes[0]["idx"], writes[1]["idx"]
    final = run_query(trace, "value_at", "addr=cell", "size=8")
    assert [r["value"] for r in final] == [0xAA, 0x11, 0xCC, 0xBB, 0x11, 0x11, 0x11, 0x11]
    assert [r["byte_addr"] for r in final] == list(range(cell, cell + 8))
    between = run_query(trace, "value_at", "addr=cell", "size=8", f"at={low_idx}")
    assert [r["value"] for r in between] == [0x11] * 8
    # nothing in the guest touched cell before write_all: every byte unknown, not zero
    before = run_query(trace, "value_at", "addr=cell", "size=8", f"at={all_idx}")
    assert [r["value"] for r in before] == [None] * 8


def test_first_last_and_hot_blocks_count_calls(history):
    program, trace, counted = history
    (row,) = run_query(trace, "first_last", "pc=read_cell")
    assert row["executions"] == TIMES and row["first_idx"] < row["last_idx"]
    (once,) = run_query(trace, "first_last", "pc=write_all")
    assert once["executions"] == 1 and once["first_idx"] == once["last_idx"]
    hot = run_query(trace, "hot_blocks", "limit=100000")
    read_cell, _ = symbol(program, "read_cell")
    assert [h["executions"] for h in hot if h["pc"] == read_cell] == [TIMES]
    assert sum(h["instructions"] for h in hot) == counted  # the independent counter's, same QEMU run


def test_coverage_counts_the_instructions_of_a_straight_line_function(guest, history):
    program, trace, _ = history
    with open(program, "rb") as f:
        elf = ELFFile(f)
        text = elf.get_section_by_name(".text")
        addr, size = symbol(program, "write_mid")
        code = text.data()[addr - text["sh_addr"]: addr - text["sh_addr"] + size]
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    expected = len(list(md.disasm(code, addr)))
    rows = run_query(trace, "coverage")
    (exe,) = [r for r in rows if r["kind"] == "executable"]
    assert exe["module"] == str(program)
    with Trace.open(trace) as t:
        (ran,) = t.sql("SELECT count(DISTINCT pc) FROM insns WHERE pc >= ? AND pc < ?", [addr, addr + size]).rows[0]
    assert ran == expected
    assert exe["unique_pcs"] >= expected and exe["executed_insns"] > 0


def test_strace_matches_qemu_strace(guest, history, qemu_strace):
    program, trace, _ = history
    calls = [r["call"] for r in run_query(trace, "strace")]
    expected = qemu_strace(program, str(TIMES))
    assert len(calls) == len(expected)
    opens = [c for c in calls if c.startswith("openat(")]
    enoent = f"= -1 {errno.errorcode[errno.ENOENT]} ({os.strerror(errno.ENOENT)})"
    assert any(c.startswith('openat(AT_FDCWD, "/nonexistent/cannoli-history", O_') and c.endswith(enoent)
               for c in opens)
    writes = [c for c in calls if c.startswith("write(")]
    printed = len("cell=11111111bbcc11aa\n")  # the bytes the program printed, as strace quotes them
    assert writes and writes[0] == f'write(1, "cell=11111111bbcc11aa\\n", {printed}) = {printed}'


def test_mmaps_timeline_shows_the_guests_mappings(guest, recorded, tmp_path_factory):
    data = tmp_path_factory.mktemp("tl") / "file.bin"
    data.write_bytes(b"z" * 5000)
    trace, stdout, _ = recorded("mappings", str(data))
    anon = int(re.search(r"anon=(\w+)", stdout)[1], 16)
    rows = run_query(trace, "mmaps_timeline")
    assert rows[0]["kind"] == "initial"
    kinds = [(r["kind"], r["start"], r["prot"], r["path"]) for r in rows if r["idx"] is not None]
    assert ("mmap", anon, "rw-", None) in kinds
    assert any(k == "mmap" and prot == "r--" and path == str(data) for k, _, prot, path in kinds)
    assert [r["idx"] for r in rows if r["idx"] is not None] == sorted(r["idx"] for r in rows if r["idx"] is not None)


def test_thread_summary_has_each_thread_with_its_share(recorded):
    trace, stdout, counted = recorded("threads", "3", "2000")
    rows = run_query(trace, "thread_summary")
    tids = {int(t) for t in re.findall(r"(?:main|worker)_tid=(\d+)", stdout)}
    assert {r["tid"] for r in rows} == tids
    assert sum(r["insns"] for r in rows) == counted
    workers = [r for r in rows if r["tid"] != int(re.search(r"main_tid=(\d+)", stdout)[1])]
    # each worker does 2000 iterations of one plain store and one atomic add to memory
    assert all(r["writes"] >= 2 * 2000 for r in workers)
