"""`cannoli index`: the DuckDB tables of real recordings, checked against the
guest's known behaviour, the ELF symbol table, an independent instruction
counter, QEMU's -strace and what the guest printed about itself."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from .conftest import GUEST_ENV, qemu_x86_64, query, run_cannoli, symbol

PROT_READ, PROT_WRITE = 1, 2


def test_known_store_is_in_mem_with_value_size_and_pc_in_the_storing_function(guest, recorded):
    trace, _, _ = recorded("known_stores")
    program = guest("known_stores")
    func, func_size = symbol(program, "store_known_values")
    for name, value, size in [("known_u64", 0x1122334455667788, 8), ("known_u32", 0xCAFEF00D, 4),
                              ("known_u16", 0xBEEF, 2), ("known_u8", 0x5A, 1)]:
        addr, _ = symbol(program, name)
        rows = query(trace, "SELECT value, size, pc FROM mem WHERE is_write AND addr = ?", addr)
        assert len(rows) == 1, name
        got_value, got_size, pc = rows[0]
        assert (got_value, got_size) == (value, size), name
        assert func <= pc < func + func_size, f"{name} stored at {pc:#x}, outside store_known_values"


@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_positions_are_dense_and_count_matches_independent_counter(recorded, static):
    trace, _, expected = recorded("known_stores", static=static)
    n, distinct, low, high = query(trace, "SELECT count(*), count(DISTINCT idx), min(idx), max(idx) FROM insns")[0]
    assert n == distinct == expected
    assert (low, high) == (0, expected - 1)
    assert query(trace, "SELECT sum(icount) FROM exec")[0][0] == expected
    assert query(trace, "SELECT sum(insns) FROM threads")[0][0] == expected


def test_every_access_belongs_to_an_executed_instruction_at_its_pc(recorded):
    trace, _, _ = recorded("known_stores")
    orphans = query(trace, "SELECT count(*) FROM mem m ANTI JOIN insns i ON i.idx = m.idx AND i.pc = m.pc")
    assert orphans == [(0,)]


def test_syscall_names_and_returns_match_qemu_strace(guest, recorded):
    trace, _, _ = recorded("known_stores")
    proc = subprocess.run([qemu_x86_64(), "-strace", "-0", str(guest("known_stores")), str(guest("known_stores"))],
                          env=GUEST_ENV, capture_output=True, text=True)
    expected = []
    for line in proc.stderr.splitlines():
        m = re.match(r"^\d+ (\w+)\(.*?\)(?: = (-?\w+))?", line)
        if m and not line.split()[1].startswith("Unknown"):
            expected.append(m[1])
    rows = query(trace, "SELECT name, ret FROM syscalls ORDER BY idx")
    names = [name for name, _ in rows]
    # QEMU prints the syscalls it knows by name and "Unknown syscall N" for the rest
    assert [n for n in names if n in expected] == expected
    assert dict(rows)["getpid"] is not None and rows[-1][0] == "exit_group" and rows[-1][1] is None


def test_syscall_idx_is_a_syscall_instruction(recorded):
    trace, _, _ = recorded("known_stores")
    rows = query(trace, """SELECT b.bytes, i.n FROM syscalls s JOIN insns i ON i.idx = s.idx
                           JOIN blocks b ON b.block_id = i.block_id""")
    assert rows
    for code, n in rows:
        # x86_64 `syscall` is 0f 05, and it is the last instruction of its block
        assert code[-2:] == b"\x0f\x05"


def test_guest_mmap_mprotect_munmap_and_file_path(guest, recorded, tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "mapped-file.bin"
    data.write_bytes(os.urandom(10000))
    trace, stdout, _ = recorded("mappings", str(data))
    anon = int(re.search(r"anon=(\w+)", stdout)[1], 16)
    file_addr, file_len = (int(x, 16) for x in re.search(r"file=(\w+) (\w+)", stdout).groups())
    page = 4096
    rows = query(trace, "SELECT kind, start, \"end\", prot, path FROM mmaps WHERE idx IS NOT NULL ORDER BY idx")
    assert ("mmap", anon, anon + 3 * page, PROT_READ | PROT_WRITE, None) in rows
    assert ("mprotect", anon + page, anon + 2 * page, PROT_READ, None) in rows
    assert ("mmap", file_addr, file_addr + 3 * page, PROT_READ, str(data)) in rows
    assert ("munmap", file_addr, file_addr + 3 * page, None, None) in rows
    assert ("munmap", anon, anon + 3 * page, None, None) in rows
    assert file_len == 10000


def test_file_name_that_is_not_utf8_is_kept_with_escapes(recorded, tmp_path_factory):
    folder = os.fsencode(tmp_path_factory.mktemp("data"))
    raw_name = folder + b"/caf\xe9-\xff.bin"
    with open(raw_name, "wb") as f:
        f.write(b"x" * 100)
    trace, stdout, _ = recorded("mappings", os.fsdecode(raw_name))
    file_addr = int(re.search(r"file=(\w+)", stdout)[1], 16)
    shown = folder.decode() + "/caf\\xe9-\\xff.bin"
    assert query(trace, "SELECT path FROM mmaps WHERE kind = 'mmap' AND start = ?", file_addr) == [(shown,)]
    assert (shown,) in query(trace, "SELECT value FROM syscall_strings WHERE nr = 257")


def test_initial_layout_has_the_stack_and_vsyscall_page(recorded, tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "mapped-file.bin"
    data.write_bytes(b"s" * 100)
    trace, stdout, _ = recorded("mappings", str(data))
    local = int(re.search(r"stack=(\w+)", stdout)[1], 16)
    stack = query(trace, "SELECT prot FROM mmaps WHERE kind = 'initial' AND path = '[stack]' "
                         "AND start <= ? AND ? < \"end\"", local, local)
    assert stack == [(PROT_READ | PROT_WRITE,)]
    # QEMU 7.2 gives x86_64 guests the legacy vsyscall page, execute-only
    assert query(trace, "SELECT start, prot FROM mmaps WHERE path = '[vsyscall]'") == [(0xFFFFFFFFFF600000, 4)]
    assert sorted(p.name for p in trace.iterdir()) == ["chunks", "meta.json", "trace.duckdb"]


def test_initial_layout_and_symbols_of_a_dynamic_program(guest, recorded):
    trace, _, _ = recorded("known_stores", static=False)
    kinds = dict(query(trace, "SELECT kind, count(*) FROM modules GROUP BY kind"))
    assert kinds.get("executable") == 1 and kinds.get("interpreter") == 1 and kinds.get("library", 0) >= 1
    libc = query(trace, "SELECT path FROM modules WHERE path LIKE '%libc.so%'")
    assert libc, "libc was not recognised as a module"
    # main is where the ELF says, relocated by the executable's load bias
    (main_addr,) = query(trace, "SELECT addr FROM symbols WHERE name = 'main' AND module NOT LIKE '%libc%'")[0]
    (bias,) = query(trace, "SELECT load_bias FROM modules WHERE kind = 'executable'")[0]
    assert main_addr == bias + symbol(guest("known_stores", static=False), "main")[0]
    # and main ran
    assert query(trace, "SELECT count(*) FROM exec WHERE pc = ?", main_addr)[0][0] == 1
    # the libc write() wrapper ran inside libc's text
    initial = query(trace, "SELECT count(*) FROM mmaps WHERE kind = 'initial' AND path IS NOT NULL")[0][0]
    assert initial >= 4


def test_threads_have_their_own_tids(recorded):
    trace, stdout, expected = recorded("threads", "4", "20000")
    main_tid = int(re.search(r"main_tid=(\d+)", stdout)[1])
    workers = {int(t) for t in re.findall(r"worker_tid=(\d+)", stdout)}
    rows = query(trace, "SELECT tid, insns, first_idx, last_idx, exited FROM threads")
    assert {r[0] for r in rows} == workers | {main_tid}
    assert sum(r[1] for r in rows) == expected
    for tid, insns, first, last, exited in rows:
        assert last - first + 1 >= insns
    per_thread = dict(query(trace, "SELECT tid, count(*) FROM mem WHERE is_write GROUP BY tid"))
    assert all(per_thread[w] >= 20000 for w in workers)


def test_cross_thread_order_respects_each_threads_program_order(recorded):
    trace, _, _ = recorded("threads", "4", "20000")
    # within each thread, positions increase with the thread's own exec order
    rows = query(trace, "SELECT tid, count(*) FROM exec GROUP BY tid")
    assert len(rows) == 5
    # thread creation (clone) precedes every instruction of the created thread
    clones = query(trace, "SELECT ret, idx FROM syscalls WHERE name = 'clone' AND ret > 0")
    for child, clone_idx in clones:
        first = query(trace, "SELECT first_idx FROM threads WHERE tid = ?", child)[0][0]
        assert first > clone_idx


def test_index_twice_gives_the_same_database(recorded):
    trace, _, _ = recorded("known_stores")
    tables = ["exec", "mem", "syscalls", "mmaps", "blocks", "block_insns", "threads", "symbols", "modules"]

    def digest():
        return {t: query(trace, f"SELECT count(*), sum(hash(t::VARCHAR)) FROM {t} AS t")[0] for t in tables}

    before = digest()
    assert run_cannoli("index", trace).returncode == 0
    assert digest() == before


def test_damaged_chunk_is_named_and_earlier_chunks_are_indexed(guest, tmp_path):
    trace = tmp_path / "long.cannoli"
    proc = run_cannoli("record", "--no-index", "-o", trace, guest("busy_loop"), "1.5")
    assert proc.returncode == 0, proc.stderr
    chunks = sorted((trace / "chunks").glob("*.zst"))
    assert len(chunks) >= 3, "need several chunks"
    victim = chunks[len(chunks) // 2]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    proc = run_cannoli("index", trace)
    assert proc.returncode == 0, proc.stderr
    assert f"chunk {victim.stem}" in proc.stderr and "INCOMPLETE" in proc.stderr
    meta = dict(query(trace, "SELECT key, value FROM meta"))
    assert json.loads(meta["index_complete"]) is False
    assert victim.stem in json.loads(meta["index_problem"])
    assert json.loads(meta["index_chunks"]) == int(victim.stem)
    assert query(trace, "SELECT count(*) FROM exec")[0][0] > 0


def test_killed_index_leaves_no_database(guest, tmp_path):
    trace = tmp_path / "kill.cannoli"
    assert run_cannoli("record", "--no-index", "-o", trace, guest("busy_loop"), "0.8").returncode == 0
    for delay in (0.3, 0.8):
        child = subprocess.Popen([sys.executable, "-m", "cannoli_db.cli", "index", str(trace)],
                                 env=GUEST_ENV, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        if not (trace / "trace.duckdb").exists():
            break
    else:
        pytest.fail("the index finished before it could be killed: the test proves nothing")
    assert not (trace / "trace.duckdb").exists()
    assert run_cannoli("index", trace).returncode == 0
    assert (trace / "trace.duckdb").exists()


def test_regs_is_empty_and_info_says_why(recorded):
    trace, _, _ = recorded("known_stores")
    assert query(trace, "SELECT count(*) FROM regs") == [(0,)]
    reason = json.loads(dict(query(trace, "SELECT key, value FROM meta"))["regs_unavailable"])
    assert "no register access" in reason
