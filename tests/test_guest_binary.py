"""guest_binary.launch: what a program or #! script runs, checked against the
kernel itself.  Each script is also executed natively; the interpreter is
tests/guests/print_argv.c, which prints the argv it got, and strace(1) shows
which file env executed.  Where the kernel refuses to run a script, launch
must refuse too (a one-line CannoliError)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cannoli_db.recorder import guest_binary
from cannoli_db.errors import CannoliError

from .conftest import GUEST_ENV, host_strace


def write_script(path, content: bytes):
    path.write_bytes(content)
    path.chmod(0o755)
    return path


def kernel_argv(script, *args, env=None, cwd=None):
    """The argv that the interpreter got when the kernel ran `script`, or the errno it refused with."""
    try:
        proc = subprocess.run([str(script), *args], capture_output=True, env=env or GUEST_ENV, cwd=cwd, timeout=60)
    except OSError as exc:
        return exc.errno
    assert proc.returncode == 0, proc.stderr
    return [os.fsdecode(a) for a in proc.stdout.split(b"\0")[:-1]]


def launched_argv(script, *args):
    try:
        return list(guest_binary.launch(str(script), list(args)).argv)
    except CannoliError as exc:
        assert "\n" not in str(exc)
        return None


@pytest.fixture(scope="module")
def scripts_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("scripts")


# the interesting bytes of a #! line: separators, terminators, argument text
LINE_BYTES = st.lists(st.sampled_from([b" ", b"\t", b"\0", b"\r", b"\n", b"a", b"b", b"-"]), max_size=300).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lead=st.integers(0, 300), tab=st.booleans(), tail=LINE_BYTES, newline=st.booleans())
def test_shebang_lines_are_read_as_the_kernel_reads_them(guest, scripts_dir, lead, tab, tail, newline):
    # a lead of spaces pushes the interpreter's name across the kernel's 256-byte window
    interp = os.fsencode(guest("print_argv"))
    content = b"#!" + (b"\t" if tab else b" ") * lead + interp + tail + (b"\necho rest\n" if newline else b"")
    script = write_script(scripts_dir / "random-line", content)
    want = kernel_argv(script, "x")
    got = launched_argv(script, "x")
    if isinstance(want, int):
        assert want in (errno.ENOEXEC, errno.ENOENT, errno.EACCES, errno.ELOOP)
        assert got is None, (content, got)
    else:
        assert got == want, content


@pytest.mark.parametrize("line, argv", [
    (b"#!INTERP\n", ["INTERP"]),
    (b"#! \t INTERP \t \n", ["INTERP"]),
    (b"#!INTERP -x\n", ["INTERP", "-x"]),
    (b"#!INTERP  one  two \t\n", ["INTERP", "one  two"]),  # Linux: one argument, inner spaces kept
    (b"#!INTERP\0ignored\n", ["INTERP"]),
    (b"#!INTERP arg\0cut\n", ["INTERP", "arg"]),
    (b"#!INTERP", ["INTERP"]),  # no newline at all
])
def test_known_lines(guest, scripts_dir, line, argv):
    interp = str(guest("print_argv"))
    script = write_script(scripts_dir / "known", line.replace(b"INTERP", os.fsencode(interp)))
    expected = [interp if a == "INTERP" else a for a in argv] + [str(script), "x", "y z"]
    assert kernel_argv(script, "x", "y z") == expected
    run = guest_binary.launch(str(script), ["x", "y z"])
    assert list(run.argv) == expected
    assert run.binary.path == interp and run.binary.arch == "x86_64"
    assert run.script["path"] == str(script)


def test_nested_interpreters_as_deep_as_the_kernel_allows(guest, scripts_dir):
    previous = str(guest("print_argv"))
    for depth in range(1, guest_binary.MAX_SCRIPT_DEPTH + 3):
        script = write_script(scripts_dir / f"level{depth}", f"#!{previous} a{depth}\n".encode())
        want, got = kernel_argv(script, "x"), launched_argv(script, "x")
        if depth <= guest_binary.MAX_SCRIPT_DEPTH:
            assert got == want and len(want) == 2 * depth + 2, depth
        else:
            assert want == errno.ELOOP and got is None, depth
        previous = str(script)
    with pytest.raises(CannoliError, match="more than 5 nested"):
        guest_binary.launch(str(scripts_dir / f"level{guest_binary.MAX_SCRIPT_DEPTH + 1}"), [])


def test_nested_chain_is_described_for_meta(guest, scripts_dir):
    interp = str(guest("print_argv"))
    inner = write_script(scripts_dir / "inner", f"#!{interp} -i\n".encode())
    outer = write_script(scripts_dir / "outer", f"#!{inner}\n".encode())
    run = guest_binary.launch(str(outer), [])
    assert run.script == {"path": str(outer), "chain": [
        {"file": str(outer), "interpreter": str(inner), "arg": None, "runs": str(inner)},
        {"file": str(inner), "interpreter": interp, "arg": "-i", "runs": interp}]}


@pytest.fixture
def command_dir(guest, tmp_path):
    """A PATH directory whose `show-argv` is print_argv, and that PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(guest("print_argv"), bin_dir / "show-argv")
    return bin_dir, f"{bin_dir}:/usr/bin:/bin"


@pytest.mark.parametrize("line, words", [(b"#!/usr/bin/env show-argv\n", ["show-argv"]),
                                         (b"#!/usr/bin/env -S show-argv -u  -v\n", ["show-argv", "-u", "-v"])])
def test_env_runs_the_command_it_finds_on_path(command_dir, tmp_path, monkeypatch, line, words):
    bin_dir, path = command_dir
    script = write_script(tmp_path / "via-env", line)
    env = dict(GUEST_ENV, PATH=path)
    proc, calls = host_strace([script, "x"], env=env)
    execs = [(os.fsdecode(strings[0]), [os.fsdecode(a) for a in strings[1:]]) for name, strings, ret in calls
             if name == "execve" and ret == 0]
    # the kernel ran env, and env ran the command it found on PATH
    assert execs[0][0] == str(script) and len(execs) == 2
    monkeypatch.setenv("PATH", path)
    run = guest_binary.launch(str(script), ["x"])
    assert run.binary.path == execs[1][0] == str(bin_dir / "show-argv")
    assert list(run.argv) == execs[1][1] == [*words, str(script), "x"]
    assert [os.fsdecode(a) for a in proc.stdout.split(b"\0")[:-1]] == list(run.argv)
    assert run.script["chain"][0]["runs"] == str(bin_dir / "show-argv")


def test_env_with_a_one_argument_command_line_fails_as_env_does(command_dir, tmp_path, monkeypatch):
    _, path = command_dir
    script = write_script(tmp_path / "one-arg", b"#!/usr/bin/env show-argv -u\n")
    native = subprocess.run([str(script)], capture_output=True, text=True, env=dict(GUEST_ENV, PATH=path))
    assert native.returncode == 127 and "show-argv -u" in native.stderr  # env looked for "show-argv -u"
    monkeypatch.setenv("PATH", path)
    with pytest.raises(CannoliError, match="env finds no 'show-argv -u' on PATH.*env -S"):
        guest_binary.launch(str(script), [])


@pytest.mark.parametrize("line, says", [
    (b"#!/no/such/interpreter\n", "no such file"),
    (b"#!/bin/sh\r\n", "carriage return"),
    (b"#!bin/sh\n", "relative path"),
    (b"#!/tmp\n", "is a directory"),
    (b"#!\n", "names no interpreter"),
    (b"#!/usr/bin/env\n", "names no command"),
    (b"#!/usr/bin/env -i sh\n", "env options"),
    (b"#!/usr/bin/env no-such-command-here\n", "env finds no"),
])
def test_lines_that_cannot_run_are_one_line_errors(tmp_path, line, says):
    script = write_script(tmp_path / "bad", line)
    with pytest.raises(CannoliError, match=says) as exc:
        guest_binary.launch(str(script), [])
    assert "\n" not in str(exc.value)


def test_an_elf_program_runs_itself(guest):
    program = str(guest("print_argv"))
    run = guest_binary.launch(program, ["a"])
    assert run.argv == (program, "a") and run.binary.path == program and run.script is None


def test_a_script_without_execute_permission_is_refused_as_the_kernel_does(guest, tmp_path):
    script = tmp_path / "not-executable"
    script.write_text(f"#!{guest('print_argv')}\n")
    script.chmod(0o644)
    assert kernel_argv(script) == errno.EACCES
    with pytest.raises(CannoliError, match="without execute permission"):
        guest_binary.launch(str(script), [])
