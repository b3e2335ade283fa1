"""A damaged meta.json or trace.duckdb: one clear line, never a traceback, and
nothing recorded is lost -- the chunks index without meta.json, and a damaged
index is rebuilt from them.  (Damaged chunks: tests/test_decode.py and
tests/test_indexer.py.)"""

from __future__ import annotations

import random
import shutil

import pytest

from cannoli_db import Trace

from .conftest import run_cannoli


@pytest.fixture
def trace(recorded, tmp_path):
    original, _, counted = recorded("history", "3")
    copy = tmp_path / "copy.cannoli"
    shutil.copytree(original, copy)
    return copy, counted


@pytest.mark.parametrize("text", ['{"broken', "[1, 2]", "", '{"format_version": "x"}'])
def test_damaged_meta_json_is_named_and_the_chunks_still_index(trace, text):
    path, counted = trace
    (path / "meta.json").write_text(text)
    (path / "trace.duckdb").unlink()
    info = run_cannoli("info", path)
    assert info.returncode == 1 and "meta.json: damaged" in info.stderr and info.stderr.count("\n") == 1
    index = run_cannoli("index", path)
    assert index.returncode == 0 and "INCOMPLETE" in index.stderr and "meta.json" in index.stderr
    with Trace.open(path) as t:
        assert t.meta["index_instructions"] == counted and t.meta["index_complete"] is False
        assert t.sql("SELECT count(*) FROM syscalls WHERE name = 'openat'").rows == [(1,)]
    assert run_cannoli("info", path).returncode == 0


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_index_says_rebuild_and_rebuilds(trace, damage):
    path, counted = trace
    db = path / "trace.duckdb"
    data = bytearray(db.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 3]
    elif damage == "flip":
        rng = random.Random(5)
        for _ in range(2000):
            data[rng.randrange(len(data))] ^= 0xFF
    else:
        data = bytearray()
    db.write_bytes(bytes(data))
    for args in (["sql", path, "SELECT count(*) FROM mem"], ["query", path, "strace"], ["info", path]):
        proc = run_cannoli(*args)
        if proc.returncode == 0:
            continue  # a flip that missed every block DuckDB reads for this command
        assert "damaged" in proc.stderr and "cannoli index" in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert run_cannoli("index", path).returncode == 0
    with Trace.open(path) as t:
        assert t.meta["index_instructions"] == counted


def test_damaged_meta_json_and_a_missing_program_leave_the_architecture_unknown(guest, tmp_path):
    # the chunks do not name the architecture: without meta.json it comes from the program's ELF header
    program = tmp_path / "known_stores"
    shutil.copy(guest("known_stores"), program)
    path = tmp_path / "t.cannoli"
    assert run_cannoli("record", "--no-index", "-o", path, program).returncode == 42
    (path / "meta.json").write_text('{"broken')
    program.unlink()
    index = run_cannoli("index", path)
    assert index.returncode == 1 and index.stderr.count("\n") == 1 and "Traceback" not in index.stderr
    assert "architecture is unknown" in index.stderr and "meta.json" in index.stderr
