"""syscall_render: syscalls rendered as strace(1) renders them.

The reference is real strace on the same static guest run natively
(tests/guests/strace_calls.c), compared line by line with the `strace` named
query of its recording; for MIPS errno numbers, QEMU's own -strace.  The
string escaper is checked against Python's C-escape decoder.

Where a native run and a QEMU run differ by nature, the comparison normalises
narrowly, each rule with its reason (see _normalise):
  - strace's `+++ exited +++` and `--- SIGCHLD ---` lines are not syscalls;
    the native execve is made by strace's child, while under QEMU the program
    is loaded by QEMU itself and never calls execve;
  - addresses above 4 GiB (the stack and mmap areas, which QEMU places
    elsewhere) become ADDR; the static image and brk heap below are compared
    exactly (the native run is under `setarch -R`, as QEMU does not randomise);
  - getrandom's bytes are random in each run;
  - pids and tids differ between runs: both sides name them PID1, PID2, ...;
  - QEMU 7.2 does not implement set_robust_list and rseq (ENOSYS), and its
    F_GETFL does not report O_LARGEFILE: those results are compared without it;
  - QEMU's own descriptors live in the guest's table, so a call that takes the
    lowest free descriptor (dup) may get a higher number under QEMU: such a
    number is mapped to the native one for the lines that follow.
"""

from __future__ import annotations

import codecs
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cannoli_db import Trace, syscall_render
from cannoli_db.syscall_tables import names as syscall_names

from .conftest import GUEST_ENV, run_cannoli

FILE_CONTENT = (b"tab\there\nnul\0esc\33[1m del\177 hi\377 q\"b\\ 7\0017"
                b"0123456789abcdefghijklmnopqrstuvwxyz-longer-than-32\n")
FILE_CONTENT = FILE_CONTENT + b"\0" * (100 - len(FILE_CONTENT)) + b"at-offset"


def _native_strace(program: Path, work: Path) -> list[list[str]]:
    """strace -ff -o FILE -s 32 under setarch -R: one list of lines per process, parent first."""
    if not shutil.which("strace"):
        pytest.fail("strace is not installed: run the README's setup command")
    out = work / "native"
    subprocess.run(["setarch", "x86_64", "-R", "strace", "-ff", "-o", str(out), "-s", "32", str(program),
                    str(work)], env=GUEST_ENV, check=True, capture_output=True, timeout=120)
    files = sorted(work.glob("native.*"), key=lambda p: int(p.suffix[1:]))
    per_process = [f.read_text().splitlines() for f in files]
    per_process.sort(key=lambda lines: not lines[0].startswith("execve("))
    return per_process


def _recorded(program: Path, work: Path, record) -> tuple[Path, list[list[str]]]:
    proc, trace = record(program, str(work))
    assert proc.returncode == 0, proc.stderr
    indexed = run_cannoli("index", trace)
    assert indexed.returncode == 0, indexed.stderr
    proc = run_cannoli("query", trace, "strace", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    calls = {(r["idx"], r["tid"]): r["call"] for r in json.loads(proc.stdout)}
    with Trace.open(trace) as t:
        order = t.sql("SELECT pid, idx, tid FROM syscalls ORDER BY seq").rows
    per_pid: dict[int, list[str]] = {}
    for pid, idx, tid in order:
        per_pid.setdefault(pid, []).append(calls[(idx, tid)])
    return trace, list(per_pid.values())


def _pids(lines: list[str]) -> dict[str, str]:
    """pid/tid numbers of one side, named by first appearance (set_tid_address, getpid, clone, wait4)."""
    found: dict[str, str] = {}
    for line in lines:
        m = re.match(r"(set_tid_address|getpid|gettid|clone|wait4)\(.*\)\s+=\s+(\d+)$", line)
        if m and m[2] not in found:
            found[m[2]] = f"PID{len(found) + 1}"
    return found


def _normalise(lines: list[str], pids: dict[str, str]) -> list[str]:
    out = []
    for line in lines:
        if line.startswith(("+++ ", "--- ")) or line.startswith("execve("):
            continue  # not syscalls / made by strace's child, not by the program under QEMU
        line = re.sub(r"\s+", " ", line).strip()
        line = re.sub(r"0x[0-9a-f]{9,}", "ADDR", line)
        line = re.sub(r'^getrandom\("[^"]*"', 'getrandom("RANDOM"', line)
        if line.startswith(("set_robust_list(", "rseq(")):
            line = line.rsplit(" = ", 1)[0] + " = RESULT"
        m = re.match(r"(fcntl\(\d+, F_GETFL\) = )0x([0-9a-f]+) \(flags (.*)\)$", line)
        if m:
            line = f"{m[1]}{int(m[2], 16) & ~0o100000:#x} (flags {m[3].replace('|O_LARGEFILE', '')})"
        for number, name in pids.items():
            line = re.sub(rf"(?<![\w.]){number}(?![\w.])", name, line)
        out.append(line)
    return out


def _map_descriptors(ours: list[str], native: list[str]) -> list[str]:
    """Rename the descriptors that QEMU's own open descriptors pushed up (see the module doc)."""
    mapped, renames = [], {}
    for mine, theirs in zip(ours, native):
        for old, new in renames.items():
            mine = re.sub(rf"^(\w+\((?:\d+, )?){old}([,)])", rf"\g<1>{new}\2", mine)
        m, n = re.match(r"(dup\(\d+\)) = (\d+)$", mine), re.match(r"(dup\(\d+\)) = (\d+)$", theirs)
        if m and n and m[1] == n[1] and m[2] != n[2]:
            renames[m[2]] = n[2]
            mine = theirs
        mapped.append(mine)
    return mapped + ours[len(native):]


def test_calls_render_as_strace_prints_them(guest, record, tmp_path):
    program = guest("strace_calls")
    native = _native_strace(program, tmp_path)
    trace, ours = _recorded(program, tmp_path, record)
    assert len(ours) == len(native) == 2  # the program and its fork child
    for mine, theirs in zip(ours, native):
        theirs = _normalise(theirs, _pids(native[0]))
        mine = _map_descriptors(_normalise(mine, _pids(ours[0])), theirs)
        assert mine == theirs


def test_buffers_hold_the_bytes_the_kernel_read_and_wrote(guest, record, tmp_path):
    program = guest("strace_calls")
    proc, trace = record(program, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert run_cannoli("index", trace).returncode == 0
    with Trace.open(trace) as t:
        rows = t.sql("""SELECT s.name, b.arg, b.item, b.data, b.truncated FROM syscall_buffers b
                        JOIN syscalls s USING (idx, tid) ORDER BY s.seq, b.arg, b.item""").rows
    reads = [r for r in rows if r[0] == "read"]
    assert [bytes(r[3]) for r in reads] == [FILE_CONTENT]  # read(999, ...) failed: nothing copied
    writev = [(r[2], bytes(r[3])) for r in rows if r[0] == "writev" and r[2] > 0]
    assert writev == [(1, b"vec-one "), (2, b"vec-two\n")] and b"".join(d for _, d in writev) in proc.stdout.encode()
    big = [r for r in rows if r[0] == "write" and r[4]]
    assert [(bytes(r[3]), r[4]) for r in big] == [(b"A" * 4096, True)]  # 5000 bytes written: the cap is kept
    (stat,) = [r for r in rows if r[0] == "newfstatat"]  # the failing stat() copied nothing
    assert len(stat[3]) == 144  # x86_64 struct stat


def test_mips_errors_have_the_mips_names(cross_guest, record, qemu):
    program = cross_guest("mipsel", "open_fails")
    proc, trace = record(program)
    assert proc.returncode == 0, proc.stderr
    assert run_cannoli("index", trace).returncode == 0
    reference = subprocess.run([qemu.path("mipsel"), "-strace", str(program)], env=GUEST_ENV, capture_output=True,
                               text=True, timeout=120).stderr
    expected = re.findall(r'openat\(AT_FDCWD,"([^"]*)",(\w[\w|]*)\) = -1 errno=(\d+) \(([^)]*)\)', reference)
    mips_errno = _cpp_errno("mipsel-linux-gnu-gcc")
    with Trace.open(trace) as t:
        calls = [r[0] for r in t.sql("SELECT call FROM syscalls WHERE name = 'openat' ORDER BY seq").rows]
    assert len(calls) == len(expected) == 2
    for call, (path, flags, number, message) in zip(calls, expected):
        name = mips_errno[int(number)]
        assert call == f'openat(AT_FDCWD, "{path}", {flags}) = -1 {name} ({message})'
    assert "ENAMETOOLONG" in calls[0] and mips_errno[78] == "ENAMETOOLONG" != _cpp_errno("gcc").get(78)


def _cpp_errno(cc: str) -> dict[int, str]:
    """errno number -> name from the compiler's own <asm/errno.h>."""
    text = subprocess.run([cc, "-E", "-dM", "-x", "c", "-"], input="#include <asm/errno.h>\n", text=True,
                          capture_output=True, check=True).stdout
    return {int(m[2]): m[1] for m in re.finditer(r"#define (E\w+) (\d+)$", text, re.M)}


# ---- the escaper ------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_quote_decodes_back_to_the_bytes(data):
    text = syscall_render.quote(data)
    assert len(text) <= 4 * len(data) + 2
    assert text[0] == text[-1] == '"'
    assert all(0x20 <= ord(ch) <= 0x7E for ch in text)
    assert codecs.escape_decode(text[1:-1].encode())[0] == data  # Python's C-escape decoder reads it back


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_hex_quote_decodes_back_to_the_bytes(data):
    text = syscall_render.quote(data, hex_all=True)
    assert len(text) == 4 * len(data) + 2
    assert bytes.fromhex(text[1:-1].replace("\\x", "")) == data


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**64 - 1), st.binary(max_size=300), st.sampled_from(sorted(syscall_names("x86_64"))))
def test_any_call_renders_one_bounded_line(length, data, nr):
    """Whatever the words and bytes, one line comes out (no exception), with
    each string argument cut to -s 32 bytes."""
    name = syscall_names("x86_64")[nr]
    args = (3, 0x1000, length, 0, 0, 0)
    call = syscall_render.Call("x86_64", nr, name, args, len(data), {1: syscall_render.Blob(data)},
                               {(1, 0): syscall_render.Blob(data), (2, 0): syscall_render.Blob(data)})
    line = syscall_render.render(call)
    assert "\n" not in line and line.startswith(f"{name}(")
    assert len(line) < 4 * 4096 + 4 * 300 + 1000
