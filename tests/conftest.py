"""Shared fixtures: guest programs built from C at test time, the independent
instruction counter, QEMU's own -strace, and running the real `cannoli` CLI.

Every recording runs real QEMU with the real plugin, ring and recorder.  The
guest environment is fixed (GUEST_ENV) and identical for the recording and for
each independent check, because the startup code of a program executes a
different number of instructions for a different environment.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile

from cannoli_db import arch as guest_arch
from cannoli_db.decode import iter_packets
from cannoli_db.query.database import connect
from cannoli_db.syscall_pairs import SyscallPairs

TESTS = Path(__file__).parent
GUESTS = TESTS / "guests"
TOOLS = TESTS / "tools"

GUEST_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": os.environ.get("HOME", "/root"),
    "LC_ALL": "C.UTF-8",  # also stops Python from coercing the locale (PEP 538)
    "CANNOLI_CACHE": os.environ.get("CANNOLI_CACHE", os.path.expanduser("~/.cache/cannoli-db")),
    "CANNOLI_CONFIG": str(Path(__file__).parent / "fixtures" / "settings-system-qemu.toml"),
}


def qemu_x86_64() -> str:
    path = shutil.which("qemu-x86_64")
    if not path:
        pytest.fail("qemu-x86_64 is not installed: run the README's setup command (apt-get install qemu-user)")
    return path


@dataclass(frozen=True)
class QemuUnderTest:
    """One of the two QEMUs every fidelity check runs on: Debian 12's 7.2
    (plugin API 1) and the 10.0 that `cannoli setup-qemu` builds (API 4)."""

    label: str
    bin_dir: Path
    api: int

    def path(self, arch: str = "x86_64") -> str:
        return str(self.bin_dir / f"qemu-{arch}")

    @property
    def record_options(self) -> list[str]:
        return ["--qemu", str(self.bin_dir)]


QEMU_LABELS = ("7.2", "10")


def qemu_under_test(label: str) -> QemuUnderTest:
    if label == "7.2":
        return QemuUnderTest("7.2", Path(qemu_x86_64()).parent, 1)
    from cannoli_db.native import qemu_build

    build = qemu_build.find_build(("x86_64", "aarch64"))
    if build is None:
        log = qemu_build.builds_dir() / "last-build.log"
        why = f" (the last build's log: {log})" if log.exists() else ""
        pytest.fail(f"QEMU 10 is not built{why}: run `cannoli setup-qemu` (or the README's setup command)")
    return QemuUnderTest("10", Path(build.bin_dir), 4)


@pytest.fixture(params=["7.2"])
def qemu(request) -> QemuUnderTest:
    """The QEMU that `record`, `insn_counter` and `qemu_strace` use: 7.2 unless a
    test asks for both with @both_qemus."""
    return qemu_under_test(request.param)


# Run a fidelity check on QEMU 7.2 and on the built QEMU 10.
both_qemus = pytest.mark.parametrize("qemu", QEMU_LABELS, indirect=True)


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("build")


@pytest.fixture(scope="session")
def guest(build_dir):
    """guest(name, static=True) -> path of tests/guests/<name>.c built for x86_64."""
    built: dict[tuple, Path] = {}

    def build(name: str, static: bool = True) -> Path:
        key = (name, static)
        if key not in built:
            built[key] = compile_guest("cc", name, build_dir / (name if static else f"{name}-dynamic"), static)
        return built[key]

    return build


def compile_guest(compiler: str, name: str, out: Path, static: bool) -> Path:
    cmd = [compiler, "-O1", "-g", "-pthread", "-o", str(out), str(GUESTS / f"{name}.c")]
    if static:
        cmd.insert(1, "-static")
    subprocess.run(cmd, check=True)
    return out


HOST_ARCH = "x86_64"  # what `guest` builds with the host's cc
# foreign architecture -> Debian cross toolchain triple (setup.sh installs the compilers)
CROSS = {a.name: a.triplet for a in guest_arch.ARCHES.values() if a.name != HOST_ARCH}


@pytest.fixture(scope="session")
def cross_guest(build_dir):
    """cross_guest(arch, name, static=True) -> tests/guests/<name>.c built for a foreign arch."""
    built: dict[tuple, Path] = {}

    def build(arch: str, name: str, static: bool = True) -> Path:
        key = (arch, name, static)
        if key not in built:
            compiler = f"{CROSS[arch]}-gcc"
            if not shutil.which(compiler):
                pytest.fail(f"{compiler} is missing: run the README's setup command")
            out = build_dir / f"{name}-{arch}{'' if static else '-dynamic'}"
            built[key] = compile_guest(compiler, name, out, static)
        return built[key]

    return build


class InsnCounter:
    """tests/tools/insn_counter.c: one atomic add per executed instruction, no
    code shared with the Cannoli DB plugin.  Loaded into the same QEMU as the
    recording (QEMU takes several -plugin options), so both see one execution:
    a multi-threaded program's instruction count differs from run to run."""

    runs = itertools.count(1)  # one file name per run in the session: the counter claims it (O_EXCL)

    def __init__(self, lib: Path, out_dir: Path, qemu: str):
        self.lib = lib
        self.out_dir = out_dir
        self.qemu = qemu

    def options(self) -> tuple[list[str], Path]:
        """cannoli record options that load the counter, and where it writes."""
        out = self.out_dir / f"count-{os.getpid()}-{next(self.runs)}.txt"
        return ["--qemu-option=-plugin", f"--qemu-option={self.lib},out={out}"], out

    @staticmethod
    def read(out: Path) -> int:
        assert out.exists(), "the independent counter wrote nothing"
        return int(out.read_text())

    @staticmethod
    def read_children(out: Path) -> dict[int, int]:
        """{pid: count} of the forked children of the run that wrote `out`."""
        return {int(p.suffix[1:]): int(p.read_text()) for p in out.parent.glob(out.name + ".*")}

    def count_alone(self, program: Path, *args: str) -> int:
        """Count a separate plain-QEMU run (for single-threaded, deterministic guests)."""
        _, out = self.options()
        subprocess.run([self.qemu, "-plugin", f"{self.lib},out={out}", "-0", str(program), str(program), *args],
                       env=GUEST_ENV, capture_output=True, timeout=600)
        return self.read(out)


@pytest.fixture(scope="session")
def insn_counter_lib(build_dir):
    """insn_counter_lib(api) -> the counter built for that plugin API version."""
    built: dict[int, Path] = {}

    def build(api: int) -> Path:
        if api not in built:
            lib = build_dir / f"insn_counter-api{api}.so"
            subprocess.run(["cc", "-O2", "-shared", "-fPIC", f"-DCOUNTER_API={api}", "-o", str(lib),
                            str(TOOLS / "insn_counter.c")], check=True)
            built[api] = lib
        return built[api]

    return build


@pytest.fixture
def insn_counter(insn_counter_lib, build_dir, qemu) -> InsnCounter:
    return InsnCounter(insn_counter_lib(qemu.api), build_dir, qemu.path())


@pytest.fixture(scope="session")
def insn_counter_72(insn_counter_lib, build_dir) -> InsnCounter:
    """The counter for session-scoped recordings, which run on QEMU 7.2."""
    return InsnCounter(insn_counter_lib(1), build_dir, qemu_x86_64())


def _syscall_numbers() -> dict[str, int]:
    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    return {m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+) (\d+)", header.read_text())}


@pytest.fixture
def qemu_strace(qemu):
    """qemu_strace(program, *args) -> [(number, return value or None)] from
    `qemu-x86_64 -strace`, names mapped to numbers with the kernel's header."""
    numbers = _syscall_numbers()

    def run(program: Path, *args: str, cwd=None) -> list[tuple[int, int | None]]:
        proc = subprocess.run([qemu.path(), "-strace", "-0", str(program), str(program), *args],
                              env=GUEST_ENV, capture_output=True, text=True, timeout=600, cwd=cwd)
        calls = []
        for line in proc.stderr.splitlines():
            unknown = re.match(r"^\d+ Unknown syscall (\d+)", line)
            named = re.match(r"^\d+ (\w+)\(", line)
            if unknown:
                calls.append((int(unknown[1]), None))
            elif named and named[1] in numbers:
                ret = None
                if " = " in line:
                    text = line.rsplit(" = ", 1)[1].split()[0]
                    ret = int(text, 0)
                    errno = re.search(r"errno=(\d+)", line)
                    if ret == -1 and errno:
                        ret = -int(errno[1])
                calls.append((numbers[named[1]], ret))
        return calls

    return run


def host_strace(cmd: list, *, cwd=None, env=None, calls: str = "execve,openat",
                timeout: int = 120) -> tuple[subprocess.CompletedProcess, list[tuple[str, list[bytes], int]]]:
    """Run `cmd` natively under strace(1) -f: (the run, [(syscall, its string
    arguments, return value)]) of the traced calls, in order; a failed call's
    return value is -errno, as the kernel returns it."""
    fd, name = tempfile.mkstemp(suffix=".strace")
    os.close(fd)
    log = Path(name)
    proc = subprocess.run(["strace", "-f", "-qq", "-xx", "-s", "65536", "-e", f"trace={calls}", "-o", str(log),
                           *map(str, cmd)], cwd=cwd, env=env or GUEST_ENV, capture_output=True, timeout=timeout)
    try:
        text = log.read_text()
    finally:
        log.unlink(missing_ok=True)
    found = []
    for line in text.splitlines():
        m = re.match(r"^\d+\s+(\w+)\((.*)\) += (-?\d+|0x[0-9a-f]+)(?: (E[A-Z0-9]+) )?", line)
        if m:
            strings = [bytes.fromhex(h.replace("\\x", "")) for h in re.findall(r'"((?:\\x[0-9a-f]{2})*)"', m[2])]
            ret = int(m[3], 0)
            found.append((m[1], strings, -getattr(errno, m[4]) if ret == -1 and m[4] else ret))
    return proc, found


def run_cannoli(*args, cwd=None, env=None, timeout=900, stdin=None, input=None) -> subprocess.CompletedProcess:
    """The real CLI in a child process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "cannoli_db.cli", *map(str, args)],
        cwd=cwd, env=env or GUEST_ENV, capture_output=True, text=True, timeout=timeout,
        stdin=None if input is not None else stdin, input=input,
    )


@pytest.fixture
def record(tmp_path, qemu):
    """record(program, *args, options=[...]) -> (CompletedProcess, trace dir), on `qemu`."""

    def do(program: Path, *args: str, options=(), name="trace.cannoli"):
        trace = tmp_path / name
        proc = run_cannoli("record", "-o", trace, "--no-index", *qemu.record_options, *options, program, *args,
                           cwd=tmp_path)
        return proc, trace

    return do


@pytest.fixture
def record_counted(record, insn_counter):
    """record_counted(program, *args, options=[...]) -> (CompletedProcess, trace
    dir, instructions counted independently in the same QEMU run)."""

    def do(program: Path, *args: str, options=(), name="trace.cannoli"):
        counter_options, out = insn_counter.options()
        proc, trace = record(program, *args, options=[*counter_options, *options], name=name)
        return proc, trace, insn_counter.read(out)

    return do


def read_meta(trace: Path) -> dict:
    return json.loads((trace / "meta.json").read_text())


def decoded_events(trace: Path) -> dict[tuple[int, int], np.ndarray]:
    """All events of each thread (pid, tid), in the thread's order."""
    per_thread: dict[tuple[int, int], list] = {}
    for p in sorted(iter_packets(trace), key=lambda p: (p.thread, p.packet_seq)):
        per_thread.setdefault(p.thread, []).append(p.events)
    return {t: np.concatenate(evs) for t, evs in per_thread.items()}


def recorded_syscalls(events: np.ndarray) -> list[tuple[int, int | None]]:
    """[(number, return value or None)] from one thread's events."""
    pairs = SyscallPairs()
    pairs.feed(0, events, range(len(events)))
    return [(int(events[k]["v"][0]), ret) for k, ret in pairs.returns.items()]


def memory_accesses(trace: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(addr, value, info) of every recorded access, all threads."""
    packets = list(iter_packets(trace))
    return (np.concatenate([p.mem_addr for p in packets]),
            np.concatenate([p.mem_value for p in packets]),
            np.concatenate([p.mem_info for p in packets]))


def symbol(program, name):
    with open(program, "rb") as f:
        sym = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)[0]
        return sym["st_value"], sym["st_size"]


def query(trace, sql, *params):
    """Rows of SQL over a trace's tables and views, through the one way to open them."""
    with connect(trace) as con:
        return con.execute(sql, params).fetchall()


@pytest.fixture(scope="session")
def recorded(guest, insn_counter_72: InsnCounter, tmp_path_factory):
    """recorded(name, *args) -> (trace, stdout, independently counted instructions), cached."""
    cache = {}

    def get(name, *args, static=True):
        key = (name, args, static)
        if key not in cache:
            trace = tmp_path_factory.mktemp("idx") / f"{name}.cannoli"
            counter_options, out = insn_counter_72.options()
            proc = run_cannoli("record", "-o", trace, *counter_options, guest(name, static=static), *args)
            assert "indexed" in proc.stderr, proc.stderr
            cache[key] = (trace, proc.stdout, insn_counter_72.read(out))
        return cache[key]

    return get


def function_containing(program, pc: int) -> str | None:
    """The FUNC symbol of the ELF file whose [st_value, st_value + st_size) holds pc."""
    with open(program, "rb") as f:
        elf = ELFFile(f)
        thumb_bit = 1 if elf["e_machine"] == "EM_ARM" else 0  # bit 0 of an ARM FUNC marks Thumb
        for sym in elf.get_section_by_name(".symtab").iter_symbols():
            start = sym["st_value"] & ~thumb_bit
            if sym["st_info"]["type"] == "STT_FUNC" and sym["st_size"] and start <= pc < start + sym["st_size"]:
                return sym.name
    return None
