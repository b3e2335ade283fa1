"""fork, exec and many threads: a forked child is traced into its own stream,
an exec is stated, and a 16-thread stress run loses no event against the
independent counter."""

from __future__ import annotations

import re

from cannoli_db import Trace

from .conftest import read_meta, run_cannoli, symbol


def test_forked_child_is_traced_in_its_own_stream(guest, insn_counter, tmp_path):
    program = guest("forks")
    counter_options, out = insn_counter.options()
    trace = tmp_path / "fork.cannoli"
    proc = run_cannoli("record", "-o", trace, *counter_options, program)
    assert proc.returncode == 0, proc.stderr
    parent = int(re.search(r"parent=(\d+)", proc.stdout)[1])
    child = int(re.search(r"child=(\d+)", proc.stdout)[1])
    children = insn_counter.read_children(out)
    assert set(children) == {child}
    mark, _ = symbol(program, "mark")
    with Trace.open(trace) as t:
        per_pid = dict(t.sql("SELECT pid, sum(insns) FROM threads GROUP BY pid").rows)
        assert per_pid == {parent: insn_counter.read(out), child: children[child]}
        assert t.sql("SELECT parent_pid FROM threads WHERE pid = $c", {"c": child}).rows == [(parent,)]
        writes = t.sql("SELECT t.pid, m.value FROM mem m JOIN threads t USING (tid) "
                       "WHERE m.is_write AND m.addr = $a ORDER BY m.idx", {"a": mark}).rows
    assert writes == [(child, 0xC41D), (parent, 0x9A9E)]


def test_exec_is_stated_in_the_summary_and_meta(guest, tmp_path):
    trace = tmp_path / "exec.cannoli"
    proc = run_cannoli("record", "--no-index", "-o", trace, guest("forks"), "exec", "/bin/echo", "from-exec")
    assert proc.returncode == 0 and "from-exec" in proc.stdout
    child = int(re.search(r"child=(\d+)", proc.stdout)[1])
    assert f"process {child} called exec(/bin/echo)" in proc.stderr and "not recorded" in proc.stderr
    assert read_meta(trace)["left_by_exec"] == [{"pid": child, "tid": child, "path": "/bin/echo"}]


def test_sixteen_threads_of_shared_memory_traffic_lose_nothing(guest, record_counted):
    # 16 threads, each 1.5 M rounds of a plain store and an atomic add to shared memory
    proc, trace, expected = record_counted(guest("threads"), "16", "1500000")
    assert proc.returncode == 0, proc.stderr
    meta = read_meta(trace)
    assert meta["counts"]["instructions"] == expected
    assert meta["counts"]["threads"] == 17
    assert run_cannoli("index", trace).returncode == 0
    with Trace.open(trace) as t:
        assert t.meta["index_instructions"] == expected
        (stores,) = t.sql("SELECT count(*) FROM mem WHERE is_write AND addr = $a",
                          {"a": symbol(guest("threads"), "shared_counter")[0]}).rows[0]
    assert stores == 16 * 1500000
