"""Call stacks from the executed blocks alone (cannoli_db/index/calls.py, qemu_patches/call_stack.c):
the `calls` table, Trace.stack, `cannoli stack`, `who-wrote --stack` and the calls_of query, on
x86_64 and aarch64 guests recorded with QEMU 7.2 (no registers) and QEMU 10.  Frames are checked
against the guest's source (tests/guests/call_chain.c) through the ELF symbol table, source lines
against addr2line, counts against what the guest printed, and sp against the return address the
call instruction pushed (recorded memory)."""

from __future__ import annotations

import os
import json
import shutil
import subprocess

import capstone
import pytest
from elftools.elf.elffile import ELFFile

from cannoli_db import CannoliError, Trace

from .conftest import CROSS, function_containing, qemu_under_test, run_cannoli, symbol

DEPTH, LEAVES = 9, 6
RUNS = [("x86_64", "7.2"), ("x86_64", "10"), ("aarch64", "7.2"), ("aarch64", "10")]


@pytest.fixture(scope="module")
def recorded_chain(guest, cross_guest, tmp_path_factory):
    cache = {}

    def get(arch: str, qemu: str):
        if (arch, qemu) not in cache:
            program = guest("call_chain") if arch == "x86_64" else cross_guest(arch, "call_chain")
            trace = tmp_path_factory.mktemp(f"calls-{arch}-{qemu}") / "chain.cannoli"
            proc = run_cannoli("record", "-o", trace, *qemu_under_test(qemu).record_options, program,
                               str(DEPTH), str(LEAVES))
            assert proc.returncode == 0 and "indexed" in proc.stderr, proc.stderr
            cache[(arch, qemu)] = (program, trace, proc.stdout)
        return cache[(arch, qemu)]

    return get


@pytest.fixture(params=RUNS, ids=[f"{a}-qemu{q}" for a, q in RUNS])
def chain(request, recorded_chain):
    program, trace, stdout = recorded_chain(*request.param)
    with Trace.open(trace) as t:
        yield request.param[0], program, t, stdout


def functions(program, frames) -> list[str | None]:
    return [function_containing(program, f.pc) for f in frames]


def writer_stack(t: Trace, name: str):
    (write,) = t.who_wrote(name, size=1)
    return t.stack(write.idx)


def test_stack_at_memcpy_is_main_a_b_from_the_source(chain):
    arch, program, t, _ = chain
    frames = writer_stack(t, "dest")
    assert functions(program, frames)[1:4] == ["chain_b", "chain_a", "main"]
    assert "mem" in functions(program, frames)[0]  # a variant of memcpy/memmove wrote dest
    assert frames[-1].kind == "start" and function_containing(program, frames[-1].pc) == "_start"
    assert [f.level for f in frames] == list(range(len(frames)))
    assert all(f.kind == "call" and f.call_idx is not None for f in frames[:-1])
    # each frame's call site is the caller_pc of the call that entered the frame inside it
    assert [f.caller_pc for f in frames[:-1]] == [f.pc for f in frames[1:]]


def test_source_lines_agree_with_addr2line(chain):
    arch, program, t, _ = chain
    frames = writer_stack(t, "dest")[1:4]
    tool = "addr2line" if arch == "x86_64" else f"{CROSS[arch]}-addr2line"
    out = subprocess.run([shutil.which(tool), "-e", str(program), *[hex(f.pc) for f in frames]],
                         capture_output=True, text=True, check=True).stdout.split()
    theirs = [(line.rsplit(":", 1)[0].rsplit("/", 1)[-1], int(line.rsplit(":", 1)[1].split()[0])) for line in out]
    assert [(f.file.rsplit("/", 1)[-1], f.line) for f in frames] == theirs
    assert all(f.source.endswith(f"call_chain.c:{f.line}") for f in frames)


def test_recursion_has_the_known_depth(chain):
    arch, program, t, stdout = chain
    assert f"recurse_calls {DEPTH}" in stdout
    frames = writer_stack(t, "deepest")
    names = functions(program, frames)
    assert names[:DEPTH] == ["recurse"] * DEPTH and names[DEPTH] == "main"
    calls = t.query("calls_of", function="recurse").dicts()
    assert len(calls) == DEPTH
    assert [c["depth"] for c in calls] == list(range(calls[0]["depth"], calls[0]["depth"] + DEPTH))
    assert [c["parent"] for c in calls[1:]] == [c["call_idx"] for c in calls[:-1]]
    # each level returns inside its caller's frame, after the deeper one returned
    ends = [c["ret_idx"] for c in calls]
    assert all(r is not None for r in ends) and ends == sorted(ends, reverse=True)


def test_calls_of_counts_the_calls_the_guest_made(chain):
    arch, program, t, stdout = chain
    assert f"leaf_calls {LEAVES}" in stdout
    calls = t.query("calls_of", function="leaf").dicts()
    assert len(calls) == LEAVES
    # all from main's frame (on aarch64, glibc enters main through a jump in _start: a tail call)
    main_frame = t.stack(calls[0]["call_idx"] + 1)[1]
    assert function_containing(program, main_frame.pc) == "main"
    for c in calls:
        assert c["kind"] == "call" and c["ret_idx"] == c["end_idx"] and c["insns"] > 0
        assert function_containing(program, c["caller_pc"]) == "main"
        assert c["parent"] == main_frame.call_idx and c["depth"] == calls[0]["depth"]


def test_longjmp_unwinds_the_deep_chain(chain):
    arch, program, t, _ = chain
    frames = writer_stack(t, "landed")
    assert functions(program, frames)[:2] == ["after_jump", "main"]
    (after,) = t.query("calls_of", function="after_jump").dicts()
    for name in ("jump_a", "jump_b", "jump_c"):
        (c,) = t.query("calls_of", function=name).dicts()
        assert c["ret_idx"] is None, f"{name} never returned: longjmp left it"
        assert c["end_idx"] < after["call_idx"]
    # all three left the stack at the same position: the longjmp's jump back into main
    ends = {t.query("calls_of", function=n).rows[0][3] for n in ("jump_a", "jump_b", "jump_c")}
    assert len(ends) == 1


def test_signal_handler_is_a_frame_that_rt_sigreturn_pops(chain):
    arch, program, t, _ = chain
    frames = writer_stack(t, "in_signal")
    names = functions(program, frames)
    assert names[:2] == ["in_handler", "on_signal"] and frames[1].kind == "signal"
    assert names.index("raise_signal") < names.index("main")
    assert frames[2].pc == frames[1].caller_pc  # the interrupted instruction
    (handler,) = t.query("calls_of", function="on_signal").dicts()
    sigreturns = [r[0] for r in t.sql("SELECT idx FROM syscalls WHERE name = 'rt_sigreturn'").rows]
    assert handler["kind"] == "signal" and sigreturns == [handler["ret_idx"]]
    after = functions(program, writer_stack(t, "resumed"))
    assert after[:3] == ["after_signal", "raise_signal", "main"]


def test_stack_pointer_is_where_the_call_pushed_its_return_address(recorded_chain):
    program, trace, _ = recorded_chain("x86_64", "10")
    with Trace.open(trace) as t:
        rows = t.sql("""SELECT c.sp, m.addr, m.value, c.caller_pc + bi.size
                        FROM calls c
                        JOIN mem m ON m.idx = c.call_idx AND m.is_write AND m.size = 8
                        JOIN block_insns bi ON bi.pc = c.caller_pc
                        WHERE c.kind = 'call' GROUP BY ALL""").rows
        assert len(rows) > 100
        assert all(sp == addr and value == ret for sp, addr, value, ret in rows)
    _, old, _ = recorded_chain("x86_64", "7.2")
    with Trace.open(old) as t:  # QEMU 7.2 gives plugins no registers
        assert t.sql("SELECT count(*), count(sp) FROM calls").rows[0][1] == 0


def test_cli_stack_and_who_wrote_stack(recorded_chain):
    program, trace, _ = recorded_chain("x86_64", "7.2")
    dest, _ = symbol(program, "dest")
    proc = run_cannoli("who-wrote", trace, "dest", "--size", "8", "--stack", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert row["first_byte"] == dest
    callers = [s.split("+")[0] for s in row["stack"].split(" < ")]
    assert callers[:3] == ["chain_b", "chain_a", "main"] and callers[-1] == "_start"
    proc = run_cannoli("stack", trace, "--at", row["idx"], "--format", "json")
    assert proc.returncode == 0, proc.stderr
    frames = json.loads(proc.stdout)
    assert [f["symbol"].split("+")[0] for f in frames[1:]] == callers
    assert os.path.basename(frames[1]["source"]).startswith("call_chain.c:")
    bad = run_cannoli("stack", trace, "--at", 10**12)
    assert bad.returncode != 0 and "outside the trace" in bad.stderr and "Traceback" not in bad.stderr


def test_a_thread_starts_with_an_empty_stack(guest, recorded):
    program = guest("threads")
    trace, stdout, _ = recorded("threads", "3", "1000")
    tids = [int(line.split("=")[1]) for line in stdout.splitlines() if line.startswith("worker_tid=")]
    marker, _ = symbol(program, "thread_marker")
    with Trace.open(trace) as t:
        for i, tid in enumerate(tids):
            (write,) = t.who_wrote(marker + 8 * i, size=8)
            assert write.tid == tid
            names = functions(program, t.stack(write.idx))
            assert names[:2] == ["worker", "start_thread"] and "main" not in names
            with pytest.raises(CannoliError, match="ran no instruction"):
                t.stack(0, tid=tid)


def _main_of(path: str) -> int:
    """main's address in a stripped x86_64 PIE, read from _start: `lea rdi, [rip + main]`."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        entry = elf["e_entry"]
        text = next(s for s in elf.iter_sections() if s["sh_addr"] <= entry < s["sh_addr"] + s["sh_size"])
        code = text.data()[entry - text["sh_addr"]: entry - text["sh_addr"] + 64]
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = True
    for insn in cs.disasm(code, entry):
        if insn.mnemonic == "lea" and insn.op_str.startswith("rdi, [rip"):
            return insn.address + insn.size + insn.operands[1].mem.disp
    raise AssertionError("no lea rdi, [rip + main] in _start")


def test_dynamic_program_stack_at_write_ends_in_main(tmp_path):
    xz = "/usr/bin/xz"
    data = tmp_path / "small.txt"
    data.write_text("call stacks from the recorded execution alone\n" * 20)
    trace = tmp_path / "xz.cannoli"
    proc = run_cannoli("record", "-o", trace, "--no-mem", xz, "-k", data)  # writes small.txt.xz
    assert proc.returncode == 0 and "indexed" in proc.stderr, proc.stderr
    assert (tmp_path / "small.txt.xz").read_bytes()[:6] == b"\xfd7zXZ\x00"
    main = _main_of(xz)
    with Trace.open(trace) as t:
        (bias,) = t.sql("SELECT load_bias FROM modules WHERE kind = 'executable'").rows[0]
        (at,) = t.sql("SELECT max(idx) FROM syscalls WHERE name = 'write'").rows[0]
        frames = t.stack(at)
        libc = t.sql("SELECT start, \"end\" FROM modules WHERE path LIKE '%/libc.so.6'").rows[0]
    assert "write" in frames[0].symbol
    entries = [f.entry for f in frames]
    assert bias + main in entries, "a frame entered xz's main"
    outer = frames[entries.index(bias + main) + 1:]
    # outside main: only the C library's start-up (__libc_start_call_main, __libc_start_main) and _start
    assert len(outer) == 3 and all(libc[0] <= f.pc < libc[1] for f in outer[:2])
    assert outer[1].symbol.startswith("__libc_start_main")
    assert outer[-1].kind == "start" and outer[-1].symbol.startswith("xz+")
