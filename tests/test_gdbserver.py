"""`cannoli gdbserver`: real gdb (Debian's gdb for x86_64, gdb-multiarch for
aarch64) in batch mode against recordings of tests/guests/debuggee.c made
with the QEMU 10 that `cannoli setup-qemu` builds.

The sources of truth: the guest's source (its call chain, the values it
stores), the ELF symbol table and the ELF file's bytes decoded by capstone
(where a function is, which instruction stores, which one calls), and what
the guest printed while it was recorded (its thread ids, leaf's address and
argument).  Registers are exact at block entries today, so register checks
stop at function entries.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import capstone
import pytest
from elftools.elf.elffile import ELFFile

from .conftest import function_containing, qemu_under_test, run_cannoli, symbol

ARCHS = ("x86_64", "aarch64")
FIRST_VALUE, SECOND_VALUE = 0x1234ABCD, 0x5678EF01  # debuggee.c
GDB = {"x86_64": "gdb", "aarch64": "gdb-multiarch"}
ARG_REGISTER = {"x86_64": "rdi", "aarch64": "x0"}
SYSROOT = {"aarch64": "/usr/aarch64-linux-gnu"}
CAPSTONE = {"x86_64": (capstone.CS_ARCH_X86, capstone.CS_MODE_64),
            "aarch64": (capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)}
CALL = {"x86_64": ("call", 5), "aarch64": ("bl", 4)}  # mnemonic and length of a direct call
SYSCALL = {"x86_64": "syscall", "aarch64": "svc"}


@dataclass(frozen=True)
class Recording:
    arch: str
    program: Path
    trace: Path
    printed: dict[str, list[str]]  # what the guest printed: key -> values, in order

    def gdb(self, *commands: str) -> str:
        return run_gdb(self.arch, self.program, self.trace, *commands)


def run_gdb(arch: str, program: Path, trace: Path, *commands: str, target: str | None = None) -> str:
    """gdb's whole output (stdout and stderr, in order) for commands run after connecting."""
    exe = shutil.which(GDB[arch])
    if exe is None:
        pytest.fail(f"{GDB[arch]} is missing: run the README's setup command (setup.sh installs gdb-multiarch)")
    server = f"{shlex.quote(sys.executable)} -m cannoli_db.cli gdbserver {shlex.quote(str(trace))}"
    setup = ["set remotetimeout 120", "set pagination off", "set confirm off"]
    if arch in SYSROOT:
        setup.append(f"set sysroot {SYSROOT[arch]}")
    args = [exe, "-nx", "-batch"]
    for command in [*setup, target or f"target remote | {server}", *commands]:
        args += ["-ex", command]
    proc = subprocess.run([*args, str(program)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=180)
    assert "Traceback" not in proc.stdout, proc.stdout
    return proc.stdout


def printed_values(out: str, name: str) -> list[int]:
    """The values of `printf "name=%#lx\\n", ...` lines in gdb's output."""
    return [int(v, 16) for v in re.findall(rf"^{name}=(0x[0-9a-f]+|0)$", out, re.M)]


def pc_lines(*names: str) -> list[str]:
    return [f'printf "{name}=%#lx\\n", $pc' for name in names]


def elf_bytes(program: Path, addr: int, n: int) -> bytes:
    with open(program, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= addr and addr + n <= seg["p_vaddr"] + seg["p_filesz"]:
                return seg.data()[addr - seg["p_vaddr"]: addr - seg["p_vaddr"] + n]
    raise AssertionError(f"{addr:#x} is not in a loaded segment of {program}")


def decode(arch: str, program: Path, addr: int, n: int = 16):
    """The first instruction at addr in the ELF file, by capstone."""
    return next(capstone.Cs(*CAPSTONE[arch]).disasm(elf_bytes(program, addr, n), addr))


@pytest.fixture(scope="module")
def qemu10():
    return qemu_under_test("10")


@pytest.fixture(scope="module")
def debuggee(guest, cross_guest, qemu10, tmp_path_factory):
    """debuggee(arch, static=True) -> Recording of tests/guests/debuggee.c, recorded once."""
    cache: dict[tuple, Recording] = {}

    def get(arch: str, static: bool = True) -> Recording:
        if (arch, static) not in cache:
            program = guest("debuggee", static) if arch == "x86_64" else cross_guest(arch, "debuggee", static)
            trace = tmp_path_factory.mktemp("gdb") / f"debuggee-{arch}.cannoli"
            sysroot = ["-L", SYSROOT[arch]] if arch in SYSROOT and not static else []
            proc = run_cannoli("record", "-o", trace, "--qemu", qemu10.bin_dir, *sysroot, program)
            assert proc.returncode == 0, proc.stderr
            printed: dict[str, list[str]] = {}
            for key, value in re.findall(r"^(\w+)=(\S+)", proc.stdout, re.M):
                printed.setdefault(key, []).append(value)
            cache[arch, static] = Recording(arch, program, trace, printed)
        return cache[arch, static]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_break_and_continue_stop_where_the_symbol_table_says_and_bt_shows_the_call_chain(debuggee, arch):
    rec = debuggee(arch)
    leaf, _ = symbol(rec.program, "leaf")
    set_second, size = symbol(rec.program, "set_second")
    out = rec.gdb(f"break *{leaf:#x}", "continue", *pc_lines("at_leaf"), "bt",
                  "delete", "break set_second", "continue", *pc_lines("in_set_second"))
    assert printed_values(out, "at_leaf") == [leaf]
    # debuggee.c: main calls outer, outer calls middle, middle calls leaf
    frames = re.findall(r"^#(\d+)\s+(?:0x[0-9a-f]+ in )?(\w+) \(", out, re.M)
    assert frames == [("0", "leaf"), ("1", "middle"), ("2", "outer"), ("3", "main")], out
    (stopped,) = printed_values(out, "in_set_second")
    assert set_second <= stopped < set_second + size


@pytest.mark.parametrize("arch", ARCHS)
def test_stepi_then_reverse_stepi_returns_to_the_same_pc(debuggee, arch):
    rec = debuggee(arch)
    leaf, _ = symbol(rec.program, "leaf")
    out = rec.gdb(f"break *{leaf:#x}", "continue", "stepi", *pc_lines("stepped"), "reverse-stepi",
                  *pc_lines("back"), "reverse-stepi", *pc_lines("caller"))
    first = decode(arch, rec.program, leaf)
    assert printed_values(out, "stepped") == [leaf + first.size]
    assert printed_values(out, "back") == [leaf]
    # one more step back is the call in middle that entered leaf
    (call_site,) = printed_values(out, "caller")
    call = decode(arch, rec.program, call_site)
    assert function_containing(rec.program, call_site) == "middle"
    assert call.mnemonic == CALL[arch][0] and int(call.op_str.lstrip("#"), 16) == leaf


@pytest.mark.parametrize("arch", ARCHS)
def test_watch_and_reverse_continue_stop_at_each_store_to_the_variable(debuggee, arch):
    rec = debuggee(arch)
    out = rec.gdb("break all_threads_alive", "continue", "watch -l watched", "reverse-continue",
                  *pc_lines("second_store"), 'printf "before_second=%#lx\\n", watched', "reverse-continue",
                  *pc_lines("first_store"))
    stores = printed_values(out, "second_store") + printed_values(out, "first_store")
    assert [function_containing(rec.program, pc) for pc in stores] == ["set_second", "set_first"], out
    for pc in stores:  # the stop is at the store itself, before it ran
        insn = decode(arch, rec.program, pc)
        assert insn.mnemonic == "str" if arch == "aarch64" else insn.op_str.startswith("qword ptr ["), insn
    assert printed_values(out, "before_second") == [FIRST_VALUE]


@pytest.mark.parametrize("arch", ARCHS)
def test_print_shows_each_known_value_and_finish_returns_to_the_caller(debuggee, arch):
    rec = debuggee(arch)
    out = rec.gdb("break set_second", "continue", 'printf "value=%#lx\\n", watched', "finish",
                  'printf "value=%#lx\\n", watched', *pc_lines("returned"))
    assert printed_values(out, "value") == [FIRST_VALUE, SECOND_VALUE]
    (back,) = printed_values(out, "returned")
    assert function_containing(rec.program, back) == "middle"
    mnemonic, length = CALL[arch]
    call = decode(arch, rec.program, back - length)
    set_second, _ = symbol(rec.program, "set_second")
    assert call.mnemonic == mnemonic and int(call.op_str.lstrip("#"), 16) == set_second


@pytest.mark.parametrize("arch", ARCHS)
def test_info_threads_lists_the_threads_the_guest_printed(debuggee, arch):
    rec = debuggee(arch)
    out = rec.gdb("break all_threads_alive", "continue", "info threads")
    listed = {int(tid) for tid in re.findall(r"^\*?\s+\d+\s+Thread (\d+)", out, re.M)}
    assert listed == {int(t) for t in rec.printed["main_tid"] + rec.printed["worker_tid"]}, out


@pytest.mark.parametrize("arch", ARCHS)
def test_continuing_past_either_end_stops_with_no_more_history(debuggee, arch):
    rec = debuggee(arch)
    out = rec.gdb("continue", *pc_lines("end"), "continue", *pc_lines("still_end"), "reverse-continue",
                  *pc_lines("start"))
    assert out.count("No more reverse-execution history.") == 3, out
    (end,) = printed_values(out, "end")
    # main returned and exit called exit_group: the last instruction is that system call
    assert function_containing(rec.program, end) in ("_exit", "_Exit")
    assert decode(arch, rec.program, end).mnemonic == SYSCALL[arch]
    assert printed_values(out, "still_end") == [end]
    with open(rec.program, "rb") as f:
        assert printed_values(out, "start") == [ELFFile(f).header["e_entry"]]


@pytest.mark.parametrize("arch, static", [("x86_64", True), ("aarch64", True), ("x86_64", False),
                                          ("aarch64", False)])
def test_registers_at_a_function_entry_hold_what_the_guest_computed(debuggee, arch, static):
    # a dynamic program is a PIE: gdb places it from the auxiliary vector and finds libc
    # through the library list, and leaf's address is the one the guest printed
    rec = debuggee(arch, static)
    pc_name = "rip" if arch == "x86_64" else "pc"
    out = rec.gdb("break leaf", "continue", f"info registers {pc_name} {ARG_REGISTER[arch]}",
                  "info sharedlibrary")
    (pc_value,) = re.findall(rf"^{pc_name}\s+(0x[0-9a-f]+)", out, re.M)
    (arg_value,) = re.findall(rf"^{ARG_REGISTER[arch]}\s+(0x[0-9a-f]+)", out, re.M)
    assert int(pc_value, 16) == int(rec.printed["leaf"][0], 16)
    assert int(arg_value, 16) == int(rec.printed["leaf_arg"][0])
    if not static:
        assert re.search(r"^0x[0-9a-f]+\s+0x[0-9a-f]+\s+Yes.*libc\.so\.6$", out, re.M), out


@pytest.mark.parametrize("arch", ARCHS)
def test_writes_are_refused(debuggee, arch):
    rec = debuggee(arch)
    out = rec.gdb("break set_second", "continue", "set var watched = 1", f"set var ${ARG_REGISTER[arch]} = 1",
                  'printf "value=%#lx\\n", watched')
    assert "Cannot access memory at address" in out
    assert re.search(r"Could not write register|remote failure reply 'E01'", out), out
    assert printed_values(out, "value") == [FIRST_VALUE]


def test_a_fatal_signal_stops_at_the_faulting_instruction(guest, qemu10, tmp_path):
    program = guest("crash")
    trace = tmp_path / "crash.cannoli"
    proc = run_cannoli("record", "-o", trace, "--qemu", qemu10.bin_dir, program, "segv")
    assert proc.returncode == 128 + signal.SIGSEGV, proc.stderr  # QEMU's own verdict on the guest
    out = run_gdb("x86_64", program, trace, "continue", *pc_lines("fault"), "continue")
    assert "Program received signal SIGSEGV" in out
    (fault,) = printed_values(out, "fault")
    # crash.c's segv case loads from address 16
    insn = decode("x86_64", program, fault)
    assert function_containing(program, fault) == "main" and insn.op_str.endswith("ptr [0x10]"), insn
    assert "No more reverse-execution history." in out.split("fault=")[1]


def test_gdb_connects_over_tcp(debuggee):
    rec = debuggee("x86_64")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "cannoli_db.cli", "gdbserver", str(rec.trace),
                               "--listen", f"127.0.0.1:{port}"], stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on 127.0.0.1" in server.stderr.readline()
        leaf, _ = symbol(rec.program, "leaf")
        out = run_gdb("x86_64", rec.program, rec.trace, f"break *{leaf:#x}", "continue", *pc_lines("at_leaf"),
                      target=f"target remote 127.0.0.1:{port}")
        assert printed_values(out, "at_leaf") == [leaf]
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_listening_beyond_localhost_warns(debuggee):
    rec = debuggee("x86_64")
    server = subprocess.Popen([sys.executable, "-m", "cannoli_db.cli", "gdbserver", str(rec.trace),
                               "--listen", "0.0.0.0:0"], stderr=subprocess.PIPE, text=True)
    try:
        first = server.stderr.readline()
        assert first.startswith("cannoli gdbserver: warning:") and "0.0.0.0" in first
        assert "listening on 0.0.0.0:" in server.stderr.readline()
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("args, message", [
    (["--at", "999999999"], "outside the trace"),
    (["--tid", "1"], "no thread 1"),
    (["--listen", "localhost"], "write HOST:PORT"),
])
def test_bad_arguments_get_one_line(debuggee, args, message):
    proc = run_cannoli("gdbserver", debuggee("x86_64").trace, *args)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
