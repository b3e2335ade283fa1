"""`cannoli record` on real guests under real QEMU, checked against independent
sources: an instruction counter plugin that shares no code with ours, QEMU's
own -strace, the guest's ELF symbol table and the guest's known stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile

from cannoli_db import Trace
from cannoli_db import format as F

from .conftest import (
    GUEST_ENV,
    both_qemus,
    decoded_events,
    host_strace,
    memory_accesses,
    qemu_under_test,
    query,
    read_meta,
    recorded_syscalls,
    run_cannoli,
)


def symbol_address(program, name: str) -> tuple[int, int]:
    with open(program, "rb") as f:
        sym = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)[0]
        return sym["st_value"], sym["st_size"]


def test_exit_status_stdio_and_arguments_pass_through(guest, record):
    program = guest("known_stores")
    # -o and --force after the program belong to the program, not to cannoli
    proc, trace = record(program, "/etc/hostname", "-o", "x", "--force")
    assert proc.returncode == 42
    assert "hello from guest" in proc.stdout
    assert proc.stdout.splitlines()[-3:] == ["arg:-o", "arg:x", "arg:--force"]
    meta = read_meta(trace)
    assert meta["complete"] is True
    assert meta["exit_status"] == 42
    assert meta["argv"][1:] == ["/etc/hostname", "-o", "x", "--force"]
    assert meta["arch"] == "x86_64"


def test_summary_paragraph_on_stderr(guest, record):
    proc, trace = record(guest("known_stores"))
    meta = read_meta(trace)
    summary = proc.stderr.strip().splitlines()[-1]
    assert f"{meta['counts']['instructions']:,} guest instructions" in summary
    assert f"{meta['counts']['mem_events']:,} memory accesses" in summary
    assert f"{meta['counts']['syscalls']:,} syscalls" in summary
    assert "bytes/instruction" in summary and "wall time" in summary


@both_qemus
@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_instruction_count_equals_independent_counter(guest, record_counted, insn_counter, static):
    program = guest("known_stores", static=static)
    proc, trace, expected = record_counted(program, "/etc/hostname")
    assert proc.returncode == 42, proc.stderr
    assert read_meta(trace)["counts"]["instructions"] == expected
    # and a separate plain run of this deterministic guest agrees too
    assert insn_counter.count_alone(program, "/etc/hostname") == expected


@both_qemus
def test_block_only_recording_counts_the_same(guest, record_counted):
    program = guest("known_stores")
    proc, trace, expected = record_counted(program, options=["--no-mem"])
    meta = read_meta(trace)
    assert meta["counts"]["instructions"] == expected
    assert meta["counts"]["mem_events"] == 0
    assert meta["record_mem"] is False


# Return values that differ between two runs: process and thread ids.
RUN_DEPENDENT = {39: "getpid", 186: "gettid", 218: "set_tid_address", 56: "clone", 57: "fork", 110: "getppid"}


@both_qemus
def test_syscalls_match_qemu_strace(guest, record, qemu_strace):
    program = guest("known_stores")
    expected = qemu_strace(program, "/etc/hostname")
    proc, trace = record(program, "/etc/hostname")
    (events,) = decoded_events(trace).values()
    got = recorded_syscalls(events)
    assert [nr for nr, _ in got] == [nr for nr, _ in expected]
    for (nr, ret), (_, want) in zip(got, expected):
        if want is not None and nr not in RUN_DEPENDENT:
            assert ret == want, f"syscall {nr}"


def test_open_path_string_is_recorded(guest, record, tmp_path):
    marker = tmp_path / "a-file-the-guest-opens.txt"
    marker.write_text("x")
    proc, trace = record(guest("known_stores"), str(marker))
    strings = []
    for p_events in decoded_events(trace).values():
        strings += [ev for ev in p_events if ev["kind"] == F.EV_BLOB]
    assert strings, "no path strings recorded"
    from cannoli_db.decode import iter_packets

    texts = []
    for p in iter_packets(trace):
        for ev in p.events[(p.events["kind"] == F.EV_BLOB) & ((p.events["v"][:, 5] & F.BLOB_STRING) != 0)]:
            off, length = int(ev["v"][1]), int(ev["v"][2])
            texts.append(bytes(p.blob[off : off + length]).decode())
    assert str(marker) in texts


@both_qemus
def test_known_stores_recorded_with_exact_values(guest, record):
    program = guest("known_stores")
    proc, trace = record(program)
    addr, value, info = memory_accesses(trace)
    stores = (info & F.MEMINFO_STORE) != 0
    size = 1 << (info & F.MEMINFO_SHIFT_MASK)
    for name, want, width in [("known_u64", 0x1122334455667788, 8), ("known_u32", 0xCAFEF00D, 4),
                              ("known_u16", 0xBEEF, 2), ("known_u8", 0x5A, 1)]:
        where, _ = symbol_address(program, name)
        hits = stores & (addr == where)
        assert hits.sum() == 1, name
        assert int(value[hits][0]) == want, name
        assert int(size[hits][0]) == width, name
    # one 16-byte SSE store: two 8-byte halves (QEMU 7.2 splits it; from QEMU 10
    # the plugin splits the value qemu_plugin_mem_get_value hands it)
    where, _ = symbol_address(program, "known_u128")
    halves = stores & ((addr == where) | (addr == where + 8))
    assert sorted((int(a), int(v), int(n)) for a, v, n in zip(addr[halves], value[halves], size[halves])) == [
        (where, 0x0706050403020100, 8), (where + 8, 0x0F0E0D0C0B0A0908, 8)]


@both_qemus
def test_multithreaded_guest_loses_no_event(guest, record_counted):
    program = guest("threads")
    proc, trace, expected = record_counted(program, "6", "100000")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = read_meta(trace)
    assert meta["counts"]["instructions"] == expected
    assert meta["counts"]["threads"] == 7
    # every worker's marker store is there with its value
    addr, value, info = memory_accesses(trace)
    base, _ = symbol_address(program, "thread_marker")
    stores = ((info & F.MEMINFO_STORE) != 0) & (addr >= base) & (addr < base + 6 * 8)
    assert sorted(int(v) for v in value[stores]) == [0xABCD0000 + i for i in range(6)]
    # and every increment of the shared counter: one atomic store per iteration
    shared, _ = symbol_address(program, "shared_counter")
    assert int(np.count_nonzero(((info & F.MEMINFO_STORE) != 0) & (addr == shared))) == 6 * 100000


@both_qemus
def test_full_ring_makes_producers_wait_not_drop(guest, record_counted):
    program = guest("threads")
    proc, trace, expected = record_counted(program, "4", "200000", options=["--ring-lanes", "2"])
    assert proc.returncode == 0, proc.stderr
    meta = read_meta(trace)
    assert meta["counts"]["producer_waits"] > 0, "the ring never filled: the test proves nothing"
    assert meta["counts"]["instructions"] == expected


def _normalised_records(trace, program):
    """exec, mem and regs rows of an indexed trace after main's first block up
    to its write (glibc's startup computes with the thread id and with
    pointers mangled by a per-process key, which differ from run to run, and
    main's first and last blocks push and pop what startup left), with stack
    addresses as offsets from the stack's start: QEMU places the stack after
    its own allocations, which the plugin's differ in."""
    main = symbol_address(program, "main")[0]
    with Trace.open(trace) as t:
        start = t.meta["initial_layout"]["start_stack"]
        (lo,) = t.sql("SELECT min(idx) FROM exec WHERE pc = $pc", {"pc": main}).rows[0]
        (hi,) = t.sql("SELECT min(idx) FROM syscalls WHERE name = 'write' AND idx > $lo", {"lo": lo}).rows[0]
        window = {"lo": lo + 1, "hi": hi}
        execs = t.sql("SELECT idx, pc FROM exec WHERE idx BETWEEN $lo AND $hi ORDER BY idx", window).rows
        mem = t.sql("SELECT idx, pc, addr, value, size, is_write FROM mem WHERE idx BETWEEN $lo AND $hi "
                    "ORDER BY idx, addr, is_write", window).rows
        regs = t.sql("SELECT idx, reg, value FROM regs WHERE idx BETWEEN $lo AND $hi ORDER BY idx, reg",
                     window).rows

    def norm(v):
        return ("stack", v - start) if abs(v - start) < 1 << 24 else v

    return (execs, [(i, pc, norm(a), norm(v), n, w) for i, pc, a, v, n, w in mem],
            [(i, r, norm(v)) for i, r, v in regs])


@pytest.mark.parametrize("name", ["known_stores", "helper_accesses"])
def test_inline_records_equal_the_callbacks(guest, tmp_path, name):
    # the same deterministic run (no address randomisation, QEMU's -seed) recorded
    # through callbacks -- QEMU's qemu_plugin_mem_get_value and gdbstub register
    # reads -- and by the generated code of qemu_patches/0004: the same blocks,
    # accesses (helpers' in C, 16-byte ones, rep movsb loops inside one block)
    # and registers, record for record
    qemu = qemu_under_test("10")
    program = guest(name)
    traces = {}
    for path in ("--inline", "--callbacks"):
        trace = tmp_path / f"{path[2:]}.cannoli"
        proc = subprocess.run(["setarch", "-R", sys.executable, "-m", "cannoli_db.cli", "record", path, "-o",
                               str(trace), *qemu.record_options, "--qemu-option=-seed", "--qemu-option=1",
                               str(program)], env=GUEST_ENV, cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode in (0, 42), proc.stderr
        assert read_meta(trace)["inline_records"] is (path == "--inline")
        traces[path] = _normalised_records(trace, program)
    inline, callbacks = traces["--inline"], traces["--callbacks"]
    assert len(inline[1]) > (10 if name == "known_stores" else 4_000_000)
    for what, a, b in zip(("exec", "mem", "regs"), inline, callbacks):
        assert len(a) == len(b), what
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        assert first is None, f"{what} row {first}: inline {a[first]}, callbacks {b[first]}"


def test_refuses_to_overwrite_without_force(guest, record):
    program = guest("known_stores")
    proc, trace = record(program)
    assert proc.returncode == 42
    again = run_cannoli("record", "--no-index", "-o", trace, program)
    assert again.returncode != 0
    assert "already exists" in again.stderr and "--force" in again.stderr
    forced = run_cannoli("record", "--no-index", "--force", "-o", trace, program)
    assert forced.returncode == 42


def test_force_refuses_a_trace_that_is_being_recorded(guest, tmp_path):
    trace = tmp_path / "live.cannoli"
    live = subprocess.Popen([sys.executable, "-m", "cannoli_db.cli", "record", "--no-index", "-o", str(trace),
                             str(guest("busy_loop")), "20"], env=GUEST_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list((trace / "chunks").glob("*.zst")) and time.monotonic() < deadline:
            time.sleep(0.1)
        forced = run_cannoli("record", "--no-index", "--force", "-o", trace, guest("known_stores"))
        assert forced.returncode == 1 and "being recorded right now" in forced.stderr
        assert forced.stderr.count("\n") == 1 and "Traceback" not in forced.stderr
        assert live.poll() is None, "the live recording was disturbed"
    finally:
        live.kill()
        live.wait()


def test_guest_killed_by_signal_exits_128_plus_signal(guest, record):
    proc, trace = record(guest("crash"), "segv")
    assert proc.returncode == 128 + 11
    meta = read_meta(trace)
    assert meta["exit_signal"] == 11 and meta["exit_signal_name"] == "SIGSEGV"
    addr, value, info = memory_accesses(trace)
    assert 0xDEADBEEF in value.tolist(), "the store before the crash is missing"


# ---------------------------------------------------------------- #! scripts

def _opened(calls) -> list[str]:
    return [os.fsdecode(strings[0]) for name, strings, ret in calls if name == "openat" and ret >= 0]


def _recorded_strings(trace, nr: int) -> list[str]:
    return [v for (v,) in query(trace, "SELECT value FROM syscall_strings WHERE nr = ? ORDER BY idx", nr)]


def _executable(trace) -> tuple[str, int]:
    ((path, span),) = query(trace, "SELECT path, \"end\" - start FROM modules WHERE kind = 'executable'")
    return path, span


def _load_span(program) -> int:
    """Bytes from the lowest PT_LOAD page to the end of the highest, from the ELF file."""
    with open(program, "rb") as f:
        loads = [s for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD"]
    low = min(s["p_vaddr"] for s in loads) & ~0xFFF
    high = max(s["p_vaddr"] + s["p_memsz"] for s in loads)
    return ((high + 0xFFF) & ~0xFFF) - low


OPENAT = 257


def test_sh_script_records_its_interpreter(tmp_path, insn_counter_72, qemu_strace):
    script = tmp_path / "hello.sh"
    script.write_text('#!/bin/sh\necho "hello from $0 with $# args: $*"\n')
    script.chmod(0o755)
    native, calls = host_strace(["./hello.sh", "a", "b c"], cwd=tmp_path)
    counter, out = insn_counter_72.options()
    proc = subprocess.run([sys.executable, "-m", "cannoli_db.cli", "record", "-o", "t.cannoli",
                           *counter, "./hello.sh", "a", "b c"], cwd=tmp_path, env=GUEST_ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == native.stdout.decode() == "hello from ./hello.sh with 2 args: a b c\n"
    trace = tmp_path / "t.cannoli"
    meta = read_meta(trace)
    assert meta["argv"] == ["./hello.sh", "a", "b c"]
    assert meta["script"] == {"path": "./hello.sh", "chain": [
        {"file": "./hello.sh", "interpreter": "/bin/sh", "arg": None, "runs": "/bin/sh"}]}
    # the program QEMU ran is /bin/sh: its image spans what the ELF file's segments span
    path, span = _executable(trace)
    assert os.path.realpath(path) == os.path.realpath("/bin/sh") and span == _load_span("/bin/sh")
    # dash opened the script by the path the kernel gave it, as in the native run
    assert "./hello.sh" in _opened(calls)
    assert "./hello.sh" in _recorded_strings(trace, OPENAT)
    info = run_cannoli("info", trace, "--format", "json")
    assert json.loads(info.stdout)["script"] == "./hello.sh (#!/bin/sh), run by /bin/sh"
    # and it is the run the kernel makes: /bin/sh with the script's path, counted in plain QEMU
    assert meta["counts"]["instructions"] == insn_counter_72.read(out)
    # the same calls, in the same order, as QEMU's -strace of /bin/sh given the
    # script's path.  (Not a second instruction count: QEMU's own threads place
    # guest mappings by timing, and libc's string functions step by alignment.)
    alone = [nr for nr, _ in qemu_strace(Path("/bin/sh"), "./hello.sh", "a", "b c", cwd=tmp_path)]
    assert [nr for (nr,) in query(trace, "SELECT nr FROM syscalls ORDER BY idx")] == alone


def test_env_python3_script_records_python3(tmp_path):
    script = tmp_path / "hello.py"
    script.write_text("#!/usr/bin/env python3\nimport sys\nprint(sys.argv, sys.executable)\n")
    script.chmod(0o755)
    env = dict(GUEST_ENV, PATH="/usr/bin:/bin")  # Debian's python3, not a shim or a venv
    native, calls = host_strace(["./hello.py", "x"], cwd=tmp_path, env=env)
    execs = [(os.fsdecode(s[0]), [os.fsdecode(a) for a in s[1:]]) for name, s, ret in calls
             if name == "execve" and ret == 0]
    assert execs[-1] == ("/usr/bin/python3", ["python3", "./hello.py", "x"])  # what env ran
    proc = run_cannoli("record", "--no-mem", "-o", "t.cannoli", "./hello.py", "x", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == native.stdout.decode() == "['./hello.py', 'x'] /usr/bin/python3\n"
    trace = tmp_path / "t.cannoli"
    meta = read_meta(trace)
    assert meta["argv"] == ["./hello.py", "x"] and meta["program_path"] == "/usr/bin/python3"
    assert meta["script"]["chain"] == [
        {"file": "./hello.py", "interpreter": "/usr/bin/env", "arg": "python3", "runs": "/usr/bin/python3"}]
    assert meta["left_by_exec"] == []  # python3 itself was recorded, not env
    path, span = _executable(trace)
    assert path == "/usr/bin/python3" and span == _load_span("/usr/bin/python3")
    # python3 opened the script where the native run opened it
    script_opens = [p for p in _opened(calls) if p.endswith("hello.py")]
    assert script_opens and [p for p in _recorded_strings(trace, OPENAT) if p.endswith("hello.py")] == script_opens
