"""Registers at block entry (QEMU >= 9), checked against a guest that loads
known constants into registers before a syscall (tests/guests/registers.c),
the guest's ELF symbol table, and the syscall's return value as the guest's
own output shows it.  And on QEMU 7.2, which cannot give registers: an empty
table and a reason, never guessed values."""

from __future__ import annotations

import json

import pytest
from elftools.elf.elffile import ELFFile

from cannoli_db import Trace

from .conftest import qemu_under_test, query, run_cannoli, symbol

MESSAGE = "registers loaded\n"
X86_CONSTANTS = {"rbx": 0x1111111111111101, "rbp": 0x1111111111111102, "r8": 0x1111111111111108,
                 "r9": 0x1111111111111109, "r10": 0x111111111111110A, "r12": 0x111111111111110C,
                 "r13": 0x111111111111110D, "r14": 0x111111111111110E, "r15": 0x111111111111110F}
A64_CONSTANTS = {f"x{n}": value for n, value in zip(range(19, 29), (
    0x1913, 0x2014, 0x2115, 0x2216, 0x2317, 0x2418, 0x2519, 0x2620, 0x2721, 0x2822))}


@pytest.fixture(scope="module")
def qemu10():
    return qemu_under_test("10")


def record_registers(program, tmp_path, qemu_dir, *options):
    trace = tmp_path / "regs.cannoli"
    proc = run_cannoli("record", "-o", trace, "--qemu", qemu_dir, *options, program)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == MESSAGE
    return trace


def first_execution(t: Trace, pc: int) -> int:
    (idx,) = t.sql("SELECT min(idx) FROM exec WHERE pc = $pc", {"pc": pc}).rows[0]
    assert idx is not None, f"{pc:#x} never started a block"
    return idx


@pytest.mark.parametrize("arch, constants, result_reg", [("x86_64", X86_CONSTANTS, "rax"),
                                                         ("aarch64", A64_CONSTANTS, "x0")])
def test_registers_hold_the_constants_loaded_before_a_syscall(guest, cross_guest, tmp_path, qemu10, arch,
                                                              constants, result_reg):
    program = guest("registers") if arch == "x86_64" else cross_guest(arch, "registers")
    trace = record_registers(program, tmp_path, qemu10.bin_dir)
    after_syscall, _ = symbol(program, "after_syscall")
    with Trace.open(trace) as t:
        at = first_execution(t, after_syscall)
        regs = t.registers_at(at)
        assert {name: regs[name] for name in constants} == constants
        assert regs[result_reg] == len(MESSAGE)  # write's return value: the bytes the guest printed
        assert regs["pc"] == after_syscall
        if arch == "x86_64":
            # the built QEMU computes x86 flags for plugins (qemu_patches/0002): the
            # recorded eflags equal what the guest's own pushfq stored, carry set
            flags_at, _ = symbol(program, "flags_seen")
            (pushed,) = t.sql("SELECT value FROM mem WHERE is_write AND addr = $a", {"a": flags_at}).rows[0]
            assert regs["eflags"] == pushed and pushed & 1
        # the named query is what registers_at runs; the CLI shows the same rows
        rows = json.loads(run_cannoli("query", trace, "registers_at", "-p", f"at={at}", "--format", "json").stdout)
    assert {r["reg"]: r["value"] for r in rows if r["reg"] in constants} == constants


def test_registers_at_the_entry_point_are_the_abi_start_state(guest, tmp_path, qemu10):
    # the x86_64 ELF ABI starts a static program with zeroed registers and rsp at
    # the stack QEMU's loader built (its page log names it, start_stack); eflags
    # holds only the always-one bit 1 and IF, as in every user-mode process
    program = guest("registers")
    trace = record_registers(program, tmp_path, qemu10.bin_dir)
    with open(program, "rb") as f:
        entry = ELFFile(f).header["e_entry"]
    with Trace.open(trace) as t:
        regs = t.registers_at(0)
        start_stack = t.meta["initial_layout"]["start_stack"]
    assert regs["pc"] == entry and regs["rsp"] == start_stack and regs["eflags"] == 0x202
    others = {name: value for name, value in regs.items() if name not in ("pc", "rsp", "eflags")}
    assert len(others) == 16 and set(others.values()) == {0}


def test_registers_are_stored_as_changes_and_replayed(guest, tmp_path, qemu10):
    program = guest("registers")
    trace = record_registers(program, tmp_path, qemu10.bin_dir)
    after_syscall, _ = symbol(program, "after_syscall")
    with Trace.open(trace) as t:
        at = first_execution(t, after_syscall)
        # the block that ends in the syscall loaded rbx: its change is recorded at after_syscall
        assert t.sql("SELECT value FROM regs WHERE idx = $i AND reg = 'rbx'", {"i": at}).rows == [
            (X86_CONSTANTS["rbx"],)]
        # changes only: no register is recorded twice in a row with one value
        (repeats,) = t.sql("""SELECT count(*) FROM (SELECT value = lag(value) OVER (PARTITION BY tid, reg ORDER BY idx)
                              AS same FROM regs) WHERE same""").rows[0]
        assert repeats == 0
    steps = run_cannoli("replay", trace, "--range", f"{at}:+1", "--format", "json").stdout
    step = json.loads(steps)  # one step: one JSON object
    assert step["regs"]["rbx"] == X86_CONSTANTS["rbx"] and step["pc"] == after_syscall


def test_no_regs_option_and_qemu_72_record_none_and_say_why(guest, tmp_path, qemu10):
    program = guest("registers")
    off = record_registers(program, tmp_path / "off", qemu10.bin_dir, "--no-regs")
    old = record_registers(program, tmp_path / "old", qemu_under_test("7.2").bin_dir)
    for trace, reason in ((off, "--no-regs"), (old, "plugin API 1")):
        assert query(trace, "SELECT count(*) FROM regs") == [(0,)]
        info = run_cannoli("info", trace).stdout
        assert reason in info
        with Trace.open(trace) as t:
            with pytest.raises(Exception, match="has no registers"):
                t.registers_at(0)
    refused = run_cannoli("record", "-o", tmp_path / "refused.cannoli", "--regs", "--qemu",
                          qemu_under_test("7.2").bin_dir, program)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "setup-qemu" in refused.stderr


@pytest.mark.parametrize("arch, name, args", [
    ("x86_64", "registers", ()), ("x86_64", "threads", ("4", "2000")), ("x86_64", "crash", ("handled",)),
    ("x86_64", "forks", ()), ("x86_64", "heap", ()), ("aarch64", "registers", ()), ("aarch64", "history", ()),
])
def test_reading_only_written_registers_misses_no_change(guest, cross_guest, tmp_path, qemu10, arch, name, args):
    # --regs-check reads every register at every block entry (QEMU's own view, the
    # source of truth) and counts changes outside the capstone write masks
    program = guest(name) if arch == "x86_64" else cross_guest(arch, name)
    trace = tmp_path / "check.cannoli"
    proc = run_cannoli("record", "--no-index", "--regs-check", "-o", trace, "--qemu", qemu10.bin_dir, program, *args)
    meta = json.loads((trace / "meta.json").read_text())
    assert meta["regs_recorded"] > 10, proc.stderr
    assert meta["regs_missed"] == 0
