"""The Python API, cannoli_db.Trace: sql, who_wrote, memory_at, names; checked
against the history guest's source and its ELF symbol table."""

from __future__ import annotations

import pytest

from cannoli_db import CannoliError, Trace

from .conftest import function_containing, symbol


@pytest.fixture(scope="module")
def history(guest, recorded):
    program = guest("history")
    trace, _, _ = recorded("history", "5")
    with Trace.open(trace) as t:
        yield program, t


def test_sql_returns_columns_and_rows(history):
    _, t = history
    rows = t.sql("SELECT name, count(*) AS n FROM syscalls WHERE name = $name GROUP BY name", {"name": "openat"})
    assert rows.columns == ["name", "n"] and rows.dicts() == [{"name": "openat", "n": 1}]


def test_who_wrote_accepts_symbols_and_numbers_alike(history):
    program, t = history
    cell, _ = symbol(program, "cell")
    by_name = t.who_wrote("cell+3")
    by_number = t.who_wrote(cell + 3)
    assert by_name == by_number and len(by_name) == 1
    (w,) = by_name
    assert function_containing(program, w.pc) == "write_mid" and w.symbol.startswith("write_mid")
    assert (w.addr, w.size, w.value, w.first_byte, w.last_byte) == (cell + 2, 2, 0xBBCC, cell + 3, cell + 3)


def test_memory_at_marks_unseen_bytes_unknown(history):
    program, t = history
    cell, _ = symbol(program, "cell")
    first_write = min(w.idx for w in t.who_wrote(cell, size=8))
    before = t.memory_at(first_write, cell, 8)
    assert before.values == (None,) * 8 and not before.known
    with pytest.raises(CannoliError, match="unknown"):
        bytes(before)
    end = t.meta["index_instructions"]
    final = (0x11111111BBCC11AA).to_bytes(8, "little")
    assert bytes(t.memory_at(end, cell, 8)) == final
    assert bytes(t.memory_at(end, "sink", 8)) == final  # read_cell copied cell to sink


def test_symbol_names_a_pc_inside_a_function(history):
    program, t = history
    addr, _ = symbol(program, "write_low")
    assert t.symbol(addr) == "write_low" and t.symbol(addr + 2) == "write_low+0x2"
    assert t.address("write_low+0x2") == addr + 2


@pytest.mark.parametrize("call, message", [
    (lambda t: t.who_wrote("no_such_symbol"), "unknown symbol"),
    (lambda t: t.who_wrote(0x10), "not in any mapping"),
    (lambda t: t.who_wrote("cell", size=0), "size must be"),
    (lambda t: t.who_wrote("cell", before=10**15), "outside the trace"),
    (lambda t: t.memory_at(-1, "cell", 4), "outside the trace"),
    (lambda t: t.sql("SELECT * FROM no_such_table"), "no_such_table"),
    (lambda t: t.sql("SELEC 1"), "syntax error"),
    (lambda t: t.sql("DELETE FROM mem"), "read-only"),
    (lambda t: t.sql("CREATE TABLE x AS SELECT 1"), "read-only"),
    (lambda t: t.query("who_wrote"), "needs -p addr"),
    (lambda t: t.query("nope"), "no query named"),
])
def test_bad_input_is_one_clear_error(history, call, message):
    _, t = history
    with pytest.raises(CannoliError, match=message) as info:
        call(t)
    assert "\n" not in str(info.value)


def test_trace_without_index_says_how_to_build_it(tmp_path, recorded):
    trace, _, _ = recorded("history", "5")
    with pytest.raises(CannoliError, match="no such trace directory"):
        Trace.open(tmp_path / "missing.cannoli")
    copy = tmp_path / "copy.cannoli"
    copy.mkdir()
    (copy / "meta.json").write_bytes((trace / "meta.json").read_bytes())
    with pytest.raises(CannoliError, match="no index yet"):
        Trace.open(copy)


def test_store_rows_and_instructions_equal_duckdb_reading_the_store(recorded):
    # the row-group path (parts index, pyarrow, kept row groups) against DuckDB's
    # own Parquet reader over the same files, on interleaved threads, in windows
    # that start inside blocks and cross chunk boundaries
    trace, _, _ = recorded("threads", "3", "2000")
    with Trace.open(trace) as t:
        end = t.end
        for lo, hi, tid in [(0, end, None), (end // 3 + 1, end // 3 + 5000, None), (7, end // 2, 2),
                            (end - 3, end + 10, None)]:
            got = t.store_rows("mem", lo, hi, ["idx", "addr", "size", "is_write", "value"], tid)
            want = t.sql("SELECT idx, addr, size, is_write, value FROM mem WHERE idx >= $lo AND idx < $hi "
                         "AND ($tid IS NULL OR tid = $tid) ORDER BY idx, addr, is_write",
                         {"lo": lo, "hi": hi, "tid": tid}).rows
            rows = sorted(zip(*(got[c].to_pylist() for c in got.column_names)), key=lambda r: (r[0], r[1], r[3]))
            assert rows == want and got["idx"].to_pylist() == sorted(got["idx"].to_pylist())
            want_insns = t.sql("SELECT idx, tid, pc, block_id, n FROM insns WHERE idx >= $lo AND idx < $hi "
                               "AND ($tid IS NULL OR tid = $tid) ORDER BY idx", {"lo": lo, "hi": hi, "tid": tid}).rows
            assert t.instructions(lo, hi, tid).rows == want_insns
        assert len(want_insns) > 0
