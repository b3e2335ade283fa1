"""aarch64, riscv64, arm (32-bit, Thumb-2) and mipsel guests, built at test
time with Debian's cross compilers: the same fidelity checks as for x86_64 --
known stores with their values, syscalls against `qemu-<arch> -strace`,
instruction counts against the independent counter, mappings (mmap2 on the
32-bit targets; anonymous by the target's own MAP_ANONYMOUS; files through
descriptors that fcntl, or fcntl64 on arm and mipsel, duplicated), and
replayed instruction bytes against the ELF file."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from elftools.elf.elffile import ELFFile

from cannoli_db import Trace, syscall_tables

from .conftest import CROSS, GUEST_ENV, function_containing, run_cannoli, symbol

ARCHES = sorted(CROSS)


def qemu_strace_names(arch: str, program, *args) -> list[str]:
    proc = subprocess.run([shutil.which(f"qemu-{arch}"), "-strace", str(program), *args], env=GUEST_ENV,
                          capture_output=True, text=True, timeout=300)
    names = []
    for line in proc.stderr.splitlines():
        unknown = re.match(r"^\d+ Unknown syscall (\d+)", line)
        named = re.match(r"^\d+ (\w+)\(", line)
        if unknown:
            names.append(f"syscall_{unknown[1]}")
        elif named:
            names.append(named[1])
    return names


@pytest.fixture(scope="module")
def recorded_cross(cross_guest, insn_counter_72, tmp_path_factory):
    cache = {}

    def get(arch: str, name: str, *args: str, static: bool = True, options=()):
        key = (arch, name, args, static, tuple(options))
        if key not in cache:
            program = cross_guest(arch, name, static)
            trace = tmp_path_factory.mktemp(arch) / f"{name}.cannoli"
            counter_options, out = insn_counter_72.options()
            proc = run_cannoli("record", "-o", trace, *options, *counter_options, program, *args)
            assert "indexed" in proc.stderr, proc.stderr
            cache[key] = (program, trace, proc, insn_counter_72.read(out))
        return cache[key]

    return get


@pytest.mark.parametrize("arch", ARCHES)
def test_known_stores_counts_and_exit(recorded_cross, arch):
    program, trace, proc, counted = recorded_cross(arch, "known_stores")
    assert proc.returncode == 42 and "hello from guest" in proc.stdout
    with Trace.open(trace) as t:
        assert t.meta["arch"] == arch and t.meta["index_instructions"] == counted
        for name, value, width in [("known_u64", 0x1122334455667788, 8), ("known_u32", 0xCAFEF00D, 4),
                                   ("known_u16", 0xBEEF, 2), ("known_u8", 0x5A, 1)]:
            addr, _ = symbol(program, name)
            assert bytes(t.memory_at(t.meta["index_instructions"], addr, width)) == value.to_bytes(width, "little")
            writers = t.who_wrote(addr, size=width)
            assert {function_containing(program, w.pc) for w in writers} == {"store_known_values"}, name


@pytest.mark.parametrize("arch", ARCHES)
def test_syscalls_match_qemu_strace(recorded_cross, arch):
    program, trace, _, _ = recorded_cross(arch, "known_stores")
    with Trace.open(trace) as t:
        ours = t.sql("SELECT nr, name FROM syscalls ORDER BY seq").rows
        opened = t.sql("SELECT value FROM syscall_strings WHERE value = '/etc/hostname'").rows
    # QEMU prints a name, or the number of a syscall it has no name for (rseq on 7.2)
    number_of = {name: nr for nr, name in syscall_tables.names(arch).items()}
    theirs = [int(n[len("syscall_"):]) if n.startswith("syscall_") else number_of.get(n)
              for n in qemu_strace_names(arch, program)]
    assert [nr for nr, _ in ours] == [t if t is not None else nr for t, (nr, _) in zip(theirs, ours)]
    assert len(theirs) == len(ours) and sum(t is None for t in theirs) <= 2
    assert "openat" in {name for _, name in ours} and "exit_group" in {name for _, name in ours}
    assert opened, "the path argument of openat was not read"


@pytest.mark.parametrize("arch", ARCHES)
def test_mappings_with_the_targets_mmap_call(recorded_cross, arch, tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "mapped.bin"
    data.write_bytes(b"m" * 6000)
    program, trace, proc, _ = recorded_cross(arch, "mappings", str(data))
    assert proc.returncode == 0, proc.stderr
    anon = int(re.search(r"anon=(\w+)", proc.stdout)[1], 16)
    file_addr = int(re.search(r"file=(\w+)", proc.stdout)[1], 16)
    local = int(re.search(r"stack=(\w+)", proc.stdout)[1], 16)
    with Trace.open(trace) as t:
        rows = t.sql("SELECT kind, start, prot, path FROM mmaps WHERE idx IS NOT NULL").rows
        stack = t.sql("""SELECT count(*) FROM mmaps WHERE kind = 'initial' AND path = '[stack]'
                         AND start <= $a AND $a < "end\"""", {"a": local}).rows[0][0]
        calls = {r[0] for r in t.sql("SELECT name FROM syscalls").rows}
    # the 32-bit targets map with mmap2 (offset in pages); mmaps calls both kinds 'mmap'
    assert ("mmap2" if arch in ("arm", "mipsel") else "mmap") in calls
    assert ("mmap", anon, 3, None) in rows
    assert any(k == "mmap" and start == file_addr and path == str(data) for k, start, _, path in rows)
    assert stack == 1


def fd_mappings(recorded_cross, arch, tmp_path_factory):
    """tests/guests/fd_mappings.c on a file of 'm's: the trace, the file, the program, and what the
    guest saw: {mapping: (address, first byte read there)}."""
    data = tmp_path_factory.getbasetemp() / "fd_mappings.bin"
    data.write_bytes(b"m" * 8192)
    program, trace, proc, _ = recorded_cross(arch, "fd_mappings", str(data))
    assert proc.returncode == 0, proc.stderr
    seen = {name: (int(addr, 16), int(first)) for name, addr, first in
            re.findall(r"^(\w+)=(\w+) (\d+)$", proc.stdout, re.M)}
    with Trace.open(trace) as t:
        rows = t.sql("SELECT start, path FROM mmaps WHERE kind = 'mmap'").rows
    return program, data, seen, {name: [path for start, path in rows if start == addr]
                                 for name, (addr, _) in seen.items()}


@pytest.mark.parametrize("arch", ARCHES)
def test_anonymous_mappings_by_the_targets_own_map_anonymous(recorded_cross, arch, tmp_path_factory):
    # MAP_ANONYMOUS is 0x800 on MIPS; there 0x20 is MAP_RENAME, which Linux ignores
    _, data, seen, paths = fd_mappings(recorded_cross, arch, tmp_path_factory)
    assert set(seen) >= {"anon_fd", "file"} and ("flag20" in seen) == (arch == "mipsel")
    for name, (_, first) in seen.items():
        assert first == (0 if name == "anon_fd" else ord("m")), name  # the kernel's answer, as the guest read it
    assert paths["anon_fd"] == [None]
    assert paths["file"] == [str(data)]
    if arch == "mipsel":
        assert paths["flag20"] == [str(data)]


@pytest.mark.parametrize("arch", ARCHES)
def test_descriptors_duplicated_by_fcntl_keep_their_file(recorded_cross, arch, tmp_path_factory):
    program, data, seen, paths = fd_mappings(recorded_cross, arch, tmp_path_factory)
    # glibc's fcntl is the fcntl64 syscall on the 32-bit targets, as QEMU itself reports
    calls = qemu_strace_names(arch, program, str(data))
    assert calls.count("fcntl64" if arch in ("arm", "mipsel") else "fcntl") == 2
    assert seen["dupfd"][1] == seen["cloexec"][1] == ord("m")
    assert paths["dupfd"] == paths["cloexec"] == [str(data)]


@pytest.mark.parametrize("arch", ARCHES)
def test_replay_shows_the_instruction_bytes_of_the_elf(recorded_cross, arch):
    program, trace, _, _ = recorded_cross(arch, "known_stores")
    with open(program, "rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        data, base = text.data(), text["sh_addr"]
    with Trace.open(trace) as t:
        steps = list(t.replay(*_function_span(t, program, "store_known_values")))
    assert steps and all(function_containing(program, s.pc) == "store_known_values" for s in steps[:3])
    for step in steps:
        assert step.bytes == data[step.pc - base: step.pc - base + len(step.bytes)]
        assert not step.insn.startswith("(bad)"), (arch, step.insn)
    if arch == "arm":  # Debian's armhf code is Thumb-2: 2-byte instructions appear
        assert any(len(s.bytes) == 2 for s in steps)


def _function_span(t, program, name):
    from cannoli_db.replay import first_execution

    start = first_execution(t, t.address(name))
    return start, start + 8


def test_dynamic_foreign_binary_with_sysroot(recorded_cross):
    program, trace, proc, counted = recorded_cross("aarch64", "known_stores", static=False,
                                                  options=["-L", "/usr/aarch64-linux-gnu"])
    assert proc.returncode == 42, proc.stderr
    with Trace.open(trace) as t:
        assert t.meta["index_instructions"] == counted
        kinds = dict(t.sql("SELECT kind, count(*) FROM modules GROUP BY kind").rows)
        libc = t.sql("SELECT count(*) FROM symbols WHERE module LIKE '%libc.so%' AND name = 'write'").rows[0][0]
    assert kinds.get("interpreter") == 1 and kinds.get("library", 0) >= 1 and libc >= 1


def test_dynamic_foreign_binary_without_sysroot_says_to_give_one(cross_guest, tmp_path):
    program = cross_guest("aarch64", "known_stores", static=False)
    proc = run_cannoli("record", "-o", tmp_path / "t.cannoli", program)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "-L /usr/aarch64-linux-gnu" in proc.stderr and not (tmp_path / "t.cannoli").exists()
    proc = run_cannoli("record", "-L", tmp_path / "nowhere", "-o", tmp_path / "t.cannoli", program)
    assert proc.returncode == 1 and "no such directory" in proc.stderr
