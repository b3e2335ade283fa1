"""Following exec (qemu_patches/0003, `-follow-exec`): the programs a guest
execs run under the same QEMU with the same options and join the recording
as new program images of the same process.

Recorded with the QEMU 10 that `cannoli setup-qemu` builds.  The truth each
check is held against: the bytes the programs print and what strace(1) -f
sees in a native run (exec results, the bytes written to stdout), the
independent instruction counter loaded into every QEMU of the recording
(tests/tools/insn_counter.c, which writes one count per program image), the
ELF files' program headers for where an image was placed, and for the QEMUs
without the patch (Debian's 7.2) the note that says exec'd programs were not
recorded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from cannoli_db import Trace, native

from .conftest import GUEST_ENV, host_strace, qemu_under_test, read_meta, run_cannoli

SYSROOT = "/usr/aarch64-linux-gnu"
ENOENT, EACCES, ENOEXEC = 2, 13, 8
CLONE_VM, CLONE_VFORK = 0x100, 0x4000


@pytest.fixture(scope="module")
def qemu10():
    return qemu_under_test("10")


@pytest.fixture
def record_on(insn_counter_lib, tmp_path):
    """record_on(qemu)(program, *args, options=[...]) -> (run, trace, counter's out file), with
    the independent counter loaded as a second plugin (it follows exec too)."""

    def on(qemu):
        counter = insn_counter_lib(qemu.api)

        def do(program, *args, options=(), name="trace.cannoli"):
            out = tmp_path / f"{name}.count"
            trace = tmp_path / name
            proc = run_cannoli("record", "-o", trace, *qemu.record_options, "--qemu-option=-plugin",
                               f"--qemu-option={counter},out={out}", *options, program, *args, cwd=tmp_path)
            return proc, trace, out

        return do

    return on


@pytest.fixture
def record10(record_on, qemu10):
    """record_on(QEMU 10)"""
    return record_on(qemu10)


def same_output(recorded: str, native_run) -> bool:
    """The recorded run printed what the native run printed, child pids aside."""
    def plain(text: str) -> str:
        return re.sub(r"child=\d+", "child=PID", text)
    return plain(recorded) == plain(native_run.stdout.decode())


def counted_images(out: Path, root_pid: int) -> dict[tuple[int, int], int]:
    """{(pid, k): instructions} from the counter's files: k = 0 for the image a process
    started with (FILE for the recorded program, FILE.<pid> for a fork child),
    k >= 1 for the k-th program process pid exec'd (FILE.<pid>.<k>)."""
    found = {(root_pid, 0): int(out.read_text())}
    for path in out.parent.glob(out.name + ".*"):
        m = re.fullmatch(re.escape(out.name) + r"\.(\d+)(?:\.(\d+))?", path.name)
        assert m, path
        found[(int(m[1]), int(m[2] or 0))] = int(path.read_text())
    return found


def recorded_images(t: Trace) -> dict[tuple[int, int], int]:
    """{(pid, k): instructions}: each single-threaded process's threads rows in
    order, one per program image."""
    rows = t.sql("SELECT pid, insns FROM threads ORDER BY pid, first_idx").rows
    images, seen = {}, {}
    for pid, insns in rows:
        k = seen[pid] = seen.get(pid, -1) + 1
        images[(pid, k)] = insns
    return images


def root_pid(t: Trace) -> int:
    return t.sql("SELECT pid FROM threads ORDER BY first_idx LIMIT 1").rows[0][0]


def executables(t: Trace) -> dict[int, list[tuple[str, int]]]:
    """{pid: [(executable, image_idx)]} in image order."""
    out = {}
    for pid, path, image_idx in t.sql("SELECT pid, path, image_idx FROM modules WHERE kind = 'executable' "
                                      "ORDER BY pid, image_idx").rows:
        out.setdefault(pid, []).append((path, image_idx))
    return out


def exec_calls(t: Trace) -> list[tuple[int, int, str, int | None]]:
    """(idx, pid, path, ret) of every execve/execveat, in order."""
    return t.sql("""SELECT s.idx, s.pid, p.value, s.ret FROM syscalls s
                    LEFT JOIN syscall_strings p ON p.idx = s.idx AND p.tid = s.tid
                    WHERE s.name IN ('execve', 'execveat') ORDER BY s.idx""").rows


def stdout_writes(t: Trace) -> list[tuple[int, bytes]]:
    """(pid, bytes) of every write(1, ...) that returned, in order."""
    return [(pid, bytes(data)) for pid, data in t.sql(
        """SELECT s.pid, b.data FROM syscalls s JOIN syscall_buffers b ON b.idx = s.idx AND b.tid = s.tid
           WHERE s.name = 'write' AND s.arg0 = 1 AND s.ret > 0 ORDER BY s.idx""").rows]


def native_execs(calls) -> list[tuple[str, int]]:
    """(program, return) of the execve/execveat calls strace saw, after the first (the test's own)."""
    return [(os.fsdecode(strings[0]) if strings else "", ret) for name, strings, ret in calls
            if name in ("execve", "execveat")][1:]


def load_span(path: str) -> tuple[int, int]:
    """[lowest page, highest page end) of the PT_LOAD segments, from the ELF file."""
    with open(path, "rb") as f:
        loads = [s for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD"]
    return (min(s["p_vaddr"] & ~0xFFF for s in loads), max((s["p_vaddr"] + s["p_memsz"] + 0xFFF) & ~0xFFF
                                                            for s in loads))


def entry_position(t: Trace, pid: int, path: str, image_idx: int) -> int | None:
    """Where the program's entry point -- e_entry from its ELF file plus the load bias the
    index placed its image at -- first ran in process pid from position image_idx on."""
    with open(path, "rb") as f:
        entry = ELFFile(f)["e_entry"]
    ((bias,),) = t.sql("SELECT load_bias FROM modules WHERE pid = $p AND kind = 'executable' "
                       "AND image_idx = $i", {"p": pid, "i": image_idx}).rows
    return t.sql("SELECT min(idx) FROM exec WHERE tid = $p AND pc = $pc AND idx >= $i",
                 {"p": pid, "pc": bias + entry, "i": image_idx}).rows[0][0]


def entry_ran(t: Trace, pid: int, path: str, image_idx: int) -> bool:
    return entry_position(t, pid, path, image_idx) is not None


def assert_images_counted(trace: Path, out: Path) -> dict[tuple[int, int], int]:
    with Trace.open(trace) as t:
        recorded = recorded_images(t)
        counted = counted_images(out, root_pid(t))
    assert recorded == counted
    assert read_meta(trace)["counts"]["instructions"] == sum(counted.values())
    return recorded


# ---------------------------------------------------------------- the QEMU

def test_the_built_qemu_says_it_follows_exec_and_7_2_does_not(qemu10):
    assert native.find_qemu("x86_64", str(qemu10.bin_dir)).follows_exec
    assert native.find_qemu("aarch64", str(qemu10.bin_dir)).follows_exec
    assert not native.find_qemu("x86_64", qemu_under_test("7.2").path()).follows_exec


# ---------------------------------------------------------------- sh -c with two programs

def test_sh_running_two_coreutils_records_three_processes(record10, tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"cannoli\x00\x7f exec\n")
    script = f"/usr/bin/printf hi; /usr/bin/od -c {data}"
    native_run, calls = host_strace(["/bin/sh", "-c", script], calls="execve,write")
    proc, trace, out = record10("/bin/sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == native_run.stdout.decode() and "hi" in proc.stdout and "c   a   n" in proc.stdout
    meta = read_meta(trace)
    assert meta["follow_exec"] and meta["left_by_exec"] == [] and meta["exec_note"] is None
    assert meta["counts"]["processes"] == 3
    images = assert_images_counted(trace, out)
    with Trace.open(trace) as t:
        execs = exec_calls(t)
        # what sh exec'd, natively and recorded: each exec entered, and none returned (the program ran)
        assert [(path, ret) for _, _, path, ret in execs] == [(p, None) for p, r in native_execs(calls) if r == 0]
        assert [path for _, _, path, _ in execs] == ["/usr/bin/printf", "/usr/bin/od"]
        # each child: the sh it forked as, then the program it exec'd, from the position after the exec
        exes = executables(t)
        threads = t.sql("SELECT pid, first_idx, last_idx, exited FROM threads ORDER BY pid, first_idx").rows
        for idx, pid, path, _ in execs:
            before, after = [r for r in threads if r[0] == pid]
            assert before[2] == idx and before[3]  # the old image ended at the execve instruction
            assert exes[pid] == [(path, after[1])]
            assert entry_ran(t, pid, path, after[1])  # placed where QEMU loaded it
            # its entry point is named in its own image, whatever sh's image had at that address
            at = entry_position(t, pid, path, after[1])
            (step,) = t.replay(at, at + 1)
            assert step.symbol.startswith(os.path.basename(path) + "+"), step.symbol
        # coverage splits each process's instructions among its images' modules, all of them counted
        per_pid: dict[int, int] = {}
        for row in t.query("coverage").dicts():
            per_pid[row["pid"]] = per_pid.get(row["pid"], 0) + row["executed_insns"]
        assert per_pid == {pid: sum(n for (p, _), n in images.items() if p == pid) for pid, _ in images}
        # the bytes each program wrote to stdout, as the native run wrote them, by the exec'd processes
        native_writes = [s[0] for name, s, ret in calls if name == "write" and ret > 0]
        assert [data for _, data in stdout_writes(t)] == native_writes
        assert {pid for pid, _ in stdout_writes(t)} == {pid for _, pid, _, _ in execs}
    assert len(images) == 5


# ---------------------------------------------------------------- static, dynamic, execveat, scripts

@pytest.mark.parametrize("how,static_child", [("fork", True), ("fork", False), ("at", True)])
def test_an_exec_d_program_is_a_new_image_of_the_process(record10, guest, how, static_child):
    child = guest("print_argv", static=static_child)
    argv = [str(child), "one", "two words"]
    native_run, calls = host_strace([guest("execs"), how, *argv], calls="execve,execveat")
    proc, trace, out = record10(guest("execs"), how, *argv)
    assert proc.returncode == 0, proc.stderr
    assert same_output(proc.stdout, native_run)
    assert proc.stdout.startswith("\0".join(argv) + "\0")
    images = assert_images_counted(trace, out)
    with Trace.open(trace) as t:
        ((idx, pid, path, ret),) = exec_calls(t)
        named = child.name if how == "at" else str(child)  # execveat names it relative to its directory
        assert (path, ret) == (named, None) and native_execs(calls) == [(named, 0)]
        assert set(images) == {(root_pid(t), 0), (pid, 0), (pid, 1)}
        ((exe, image_idx),) = executables(t)[pid]
        assert exe == str(child) and entry_ran(t, pid, exe, image_idx)
        kinds = {k for (k,) in t.sql("SELECT kind FROM modules WHERE pid = $p", {"p": pid}).rows}
        assert kinds == ({"executable"} if static_child else {"executable", "interpreter", "library"})
        if static_child:  # a static program is not relocated: its segments are where its ELF file says
            start, end = t.sql("SELECT start, \"end\" FROM modules WHERE pid = $p", {"p": pid}).rows[0]
            assert (start, end) == load_span(str(child))
            # the new image's registers: its own, from its first instruction (the x86-64 ELF ABI's
            # start: at the entry point, general registers 0)
            with open(child, "rb") as f:
                entry = ELFFile(f)["e_entry"]
            regs = t.registers_at(image_idx)
            assert regs["pc"] == entry and regs["rax"] == regs["rdi"] == regs["rbp"] == 0
        assert stdout_writes(t)[:3] == [(pid, a.encode() + b"\0") for a in argv]


def test_a_script_runs_its_interpreter_as_the_kernel_does(record10, guest, tmp_path):
    interpreter = guest("print_argv")
    script = tmp_path / "script.sh"
    script.write_text(f"#!{interpreter}  -x  y \necho not run\n")
    script.chmod(0o755)
    native_run, _ = host_strace([guest("execs"), "fork", script, "arg"], calls="execve")
    proc, trace, out = record10(guest("execs"), "fork", script, "arg")
    assert proc.returncode == 0, proc.stderr
    assert same_output(proc.stdout, native_run)
    assert proc.stdout.startswith(f"{interpreter}\0-x  y\0{script}\0arg\0")
    assert_images_counted(trace, out)
    with Trace.open(trace) as t:
        ((_, pid, path, ret),) = exec_calls(t)
        assert (path, ret) == (str(script), None)
        assert [p for p, _ in executables(t)[pid]] == [str(interpreter)]


def test_posix_spawn_with_vfork_runs_the_program_recorded(record10, guest):
    argv = ["/usr/bin/printf", "spawned %s\\n", "ok"]
    native_run, _ = host_strace([guest("execs"), "spawn", *argv], calls="execve")
    proc, trace, out = record10(guest("execs"), "spawn", *argv)
    assert proc.returncode == 0, proc.stderr
    assert same_output(proc.stdout, native_run) and proc.stdout.startswith("spawned ok\n")
    assert_images_counted(trace, out)
    with Trace.open(trace) as t:
        ((_, pid, path, ret),) = exec_calls(t)
        assert (path, ret) == ("/usr/bin/printf", None)
        assert [p for p, _ in executables(t)[pid]] == ["/usr/bin/printf"]
        assert stdout_writes(t)[0] == (pid, b"spawned ok\n")
        # glibc made the child with CLONE_VM | CLONE_VFORK (QEMU runs it as a fork)
        vfork = CLONE_VM | CLONE_VFORK
        assert any(flags & vfork == vfork for (flags,) in t.sql("SELECT arg0 FROM syscalls WHERE name = 'clone'").rows)


def test_a_thread_that_execs_holds_no_lane(record10):
    # twelve programs in turn on a two-lane ring: a lane left with each exec'd thread would stop the fourth
    script = "i=0; while [ $i -lt 12 ]; do /usr/bin/true; i=$((i+1)); done; echo done"
    proc, trace, out = record10("/bin/sh", "-c", script, options=["--ring-lanes", "2"])
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    images = assert_images_counted(trace, out)
    assert len(images) == 1 + 2 * 12 and read_meta(trace)["counts"]["salvaged_packets"] == 0
    with Trace.open(trace) as t:
        assert [path for _, _, path, _ in exec_calls(t)] == ["/usr/bin/true"] * 12


# ---------------------------------------------------------------- failures

@pytest.mark.parametrize("target,errno,label", [("missing", ENOENT, "10"), ("not-executable", EACCES, "10"),
                                                ("garbage", ENOEXEC, "10"), ("directory", EACCES, "10"),
                                                ("missing", ENOENT, "7.2")])
def test_a_failed_exec_returns_its_errno_and_the_guest_goes_on(record_on, guest, tmp_path, target, errno, label):
    record = record_on(qemu_under_test(label))  # the stream goes on after the call on either QEMU
    path = tmp_path / target
    if target == "directory":
        path.mkdir()
    elif target != "missing":
        path.write_bytes(b"\x01\x02 not a program\n")
        path.chmod(0o644 if target == "not-executable" else 0o755)
    native_run, calls = host_strace([guest("execs"), "fail", path], calls="execve")
    assert native_execs(calls) == [(str(path), -errno)]
    proc, trace, out = record(guest("execs"), "fail", path)
    assert proc.returncode == 0, proc.stderr
    assert same_output(proc.stdout, native_run) and proc.stdout == f"execv errno={errno} sum=499500\n"
    images = assert_images_counted(trace, out)
    assert len(images) == 1  # no new image, and no instruction lost or counted twice around the call
    with Trace.open(trace) as t:
        ((idx, pid, exec_path, ret),) = exec_calls(t)
        assert (exec_path, ret) == (str(path), -errno)
        after = t.sql("SELECT name FROM syscalls WHERE idx > $i ORDER BY idx", {"i": idx}).rows
        assert ("write",) in after and after[-1] == ("exit_group",)
        assert t.sql("SELECT count(*), bool_and(exited) FROM threads").rows == [(1, True)]


# ---------------------------------------------------------------- other architectures

def test_aarch64_dynamic_parent_runs_a_static_child_under_qemu_with_its_sysroot(record10, cross_guest):
    parent = cross_guest("aarch64", "execs", static=False)
    child = cross_guest("aarch64", "print_argv")
    proc, trace, out = record10(parent, "fork", child, "arm", options=["-L", SYSROOT])
    assert proc.returncode == 0, proc.stderr
    # print_argv writes its argv: the kernel's (here the followed QEMU's -0 and arguments)
    assert proc.stdout.startswith(f"{child}\0arm\0child=") and proc.stdout.endswith(" status=0\n")
    meta = read_meta(trace)
    assert meta["arch"] == "aarch64" and meta["left_by_exec"] == []
    assert_images_counted(trace, out)
    with Trace.open(trace) as t:
        ((_, pid, path, ret),) = exec_calls(t)
        assert (path, ret) == (str(child), None)
        assert executables(t)[pid] == [(str(child), t.sql(
            "SELECT max(first_idx) FROM threads WHERE pid = $p", {"p": pid}).rows[0][0])]
        start, end = t.sql("SELECT start, \"end\" FROM modules WHERE pid = $p", {"p": pid}).rows[0]
        assert (start, end) == load_span(str(child))
        assert entry_ran(t, pid, str(child), executables(t)[pid][0][1])
        # the parent is dynamic: its loader and libraries came from the sysroot
        (interp,) = t.sql("SELECT path FROM modules WHERE pid = $p AND kind = 'interpreter'",
                          {"p": root_pid(t)}).rows[0]
        assert interp == "/lib/ld-linux-aarch64.so.1"
        assert stdout_writes(t)[:2] == [(pid, str(child).encode() + b"\0"), (pid, b"arm\0")]


def test_a_host_program_exec_d_by_an_aarch64_guest_runs_natively_unrecorded(record10, cross_guest):
    parent = cross_guest("aarch64", "execs", static=False)
    proc, trace, _ = record10(parent, "fork", "/usr/bin/printf", "native %s\\n", "x86", options=["-L", SYSROOT])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("native x86\nchild=")  # the kernel ran it: its output passes through
    meta = read_meta(trace)
    with Trace.open(trace) as t:
        ((_, pid, path, ret),) = exec_calls(t)
        assert (path, ret) == ("/usr/bin/printf", None)
        assert [p for p, _ in executables(t).get(pid, [])] == []  # no image of it in the trace
    assert meta["left_by_exec"] == [{"pid": pid, "tid": pid, "path": "/usr/bin/printf"}]
    assert meta["exec_note"] in proc.stderr.splitlines() and "another architecture" in meta["exec_note"]


def test_an_aarch64_program_exec_d_by_an_x86_guest_gets_what_the_kernel_gives(record10, guest, cross_guest):
    child = cross_guest("aarch64", "print_argv")
    native_run, calls = host_strace([guest("execs"), "fork", child], calls="execve")
    ((_, native_ret),) = native_execs(calls)  # -ENOEXEC, or 0 where binfmt_misc runs aarch64 programs
    proc, trace, _ = record10(guest("execs"), "fork", child)
    assert proc.returncode == 0, proc.stderr
    assert same_output(proc.stdout, native_run)
    with Trace.open(trace) as t:
        ((_, pid, path, ret),) = exec_calls(t)
    assert (path, ret) == (str(child), None if native_ret == 0 else native_ret)


# ---------------------------------------------------------------- not following

SH_TWO = "/usr/bin/printf one; /usr/bin/printf ' two\\n'"


def test_no_follow_exec_leaves_the_programs_to_the_kernel(record10):
    native_run, _ = host_strace(["/bin/sh", "-c", SH_TWO], calls="execve")
    proc, trace, out = record10("/bin/sh", "-c", SH_TWO, options=["--no-follow-exec"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == native_run.stdout.decode() == "one two\n"
    meta = read_meta(trace)
    assert meta["follow_exec"] is False
    assert [d["path"] for d in meta["left_by_exec"]] == ["/usr/bin/printf", "/usr/bin/printf"]
    notes = [line for line in proc.stderr.splitlines() if line.startswith("cannoli: 2 processes exec'd")]
    assert notes == [meta["exec_note"]] and "--no-follow-exec" in notes[0]
    with Trace.open(trace) as t:
        assert t.sql("SELECT count(*), count(DISTINCT pid) FROM threads").rows == [(3, 3)]
        assert executables(t) == {root_pid(t): [("/bin/sh", 0)]}
    # no QEMU ran the programs: the counter wrote only sh's and the two children's sh parts
    assert len(list(out.parent.glob(out.name + ".*.*"))) == 0


def test_qemu_7_2_says_once_that_exec_d_programs_are_not_recorded(tmp_path):
    qemu72 = qemu_under_test("7.2")
    trace = tmp_path / "t.cannoli"
    proc = run_cannoli("record", "--no-index", "-o", trace, *qemu72.record_options, "/bin/sh", "-c", SH_TWO,
                       cwd=tmp_path, env=GUEST_ENV)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "one two\n"
    meta = read_meta(trace)
    assert meta["follow_exec"] is False and len(meta["left_by_exec"]) == 2
    notes = [line for line in proc.stderr.splitlines() if "does not follow exec" in line]
    assert notes == [meta["exec_note"]]
    assert "`cannoli setup-qemu`" in notes[0] and "--qemu built" in notes[0] and "7.2" in notes[0]
