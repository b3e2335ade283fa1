"""Guests that crash: the recording holds everything up to the faulting
instruction, and that instruction is the last one recorded.  The source of
truth is QEMU's own core dump of the guest (its NT_PRSTATUS registers give the
pc where the signal was taken); for a fault caught by a handler, the
independent instruction counter."""

from __future__ import annotations

import resource
import signal
import struct
import subprocess
import sys

import pytest
from elftools.elf.elffile import ELFFile

from cannoli_db import Trace

from .conftest import GUEST_ENV, both_qemus, read_meta, run_cannoli

PRSTATUS_PC_OFFSET = 112 + 16 * 8  # x86_64 elf_prstatus: pr_reg starts at 112, rip is register 16
CORE_LIMIT = 32 << 20


def guest_core_pc(folder) -> int:
    (core,) = folder.glob("qemu_*.core")
    with open(core, "rb") as f:
        for segment in ELFFile(f).iter_segments():
            if segment["p_type"] == "PT_NOTE":
                for note in segment.iter_notes():
                    if note["n_type"] == "NT_PRSTATUS":
                        return struct.unpack_from("<Q", note["n_desc"], PRSTATUS_PC_OFFSET)[0]
    raise AssertionError("no NT_PRSTATUS in QEMU's core dump")


def record_with_core(program, how, folder, qemu):
    def allow_core():
        resource.setrlimit(resource.RLIMIT_CORE, (CORE_LIMIT, CORE_LIMIT))

    trace = folder / "crash.cannoli"
    proc = subprocess.run([sys.executable, "-m", "cannoli_db.cli", "record", "-o", str(trace),
                           *qemu.record_options, str(program), how],
                          cwd=folder, env=GUEST_ENV, capture_output=True, text=True, timeout=300,
                          preexec_fn=allow_core)
    return proc, trace


@both_qemus
@pytest.mark.parametrize("how, sig", [("segv", signal.SIGSEGV), ("fpe", signal.SIGFPE),
                                      ("stack", signal.SIGSEGV), ("abort", signal.SIGABRT)])
def test_crash_is_recorded_up_to_the_faulting_instruction(guest, tmp_path, qemu, how, sig):
    proc, trace = record_with_core(guest("crash"), how, tmp_path, qemu)
    assert proc.returncode == 128 + sig, proc.stderr
    assert "Traceback" not in proc.stderr
    meta = read_meta(trace)
    assert meta["exit_signal"] == sig and meta["exit_signal_name"] == sig.name
    core_pc = guest_core_pc(tmp_path)
    with Trace.open(trace) as t:
        (last_idx, pc, size), = t.sql("SELECT idx, pc, size FROM insns ORDER BY idx DESC LIMIT 1").rows
        assert last_idx == t.meta["index_instructions"] - 1
        (marker,) = t.sql("SELECT count(*) FROM mem WHERE is_write AND value = 3735928559").rows[0]
        (after,) = t.sql("SELECT count(*) FROM mem WHERE idx > $i", {"i": last_idx}).rows[0]
    assert marker == 1 and after == 0
    if sig == signal.SIGABRT:
        # abort() raises the signal with a syscall; QEMU takes it right after
        assert pc + size == core_pc
    else:
        assert pc == core_pc, f"last recorded pc {pc:#x}, QEMU faulted at {core_pc:#x}"


@both_qemus
def test_faults_caught_by_a_handler_count_exactly(guest, record_counted):
    proc, trace, expected = record_counted(guest("crash"), "handled")
    assert proc.returncode == 0, proc.stderr
    assert read_meta(trace)["counts"]["instructions"] == expected
    assert run_cannoli("index", trace).returncode == 0
    with Trace.open(trace) as t:
        assert t.meta["index_instructions"] == expected
