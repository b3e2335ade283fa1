"""Bad input to `cannoli record`: one line naming the problem and the fix, a
non-zero exit, no traceback, and no trace directory that looks complete."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest

from .conftest import GUEST_ENV, run_cannoli


def assert_clean_error(proc, *words):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def fake_elf(path, e_machine: int):
    """A 64-bit little-endian ELF header for the given machine, nothing else."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, e_machine, 1, 0, 0, 0, 0, 64, 0, 0, 0, 0, 0)
    path.write_bytes(header)
    path.chmod(0o755)


def test_missing_program(tmp_path):
    proc = run_cannoli("record", "-o", tmp_path / "t", tmp_path / "does-not-exist")
    assert_clean_error(proc, "no such file")
    assert not (tmp_path / "t").exists()


def test_not_an_elf_or_script(tmp_path):
    data = tmp_path / "notes.txt"
    data.write_text("echo hi\n")
    data.chmod(0o755)
    proc = run_cannoli("record", "-o", tmp_path / "t", data)
    assert_clean_error(proc, "not an ELF executable or a #! script")
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("line, says", [("#!/no/such/shell\n", "'/no/such/shell': no such file"),
                                        ("#!sh\n", "relative path"),
                                        ("#!/usr/bin/env no-such-command-x\n", "env finds no 'no-such-command-x'")])
def test_script_whose_interpreter_cannot_run(tmp_path, line, says):
    script = tmp_path / "script.sh"
    script.write_text(line + "echo hi\n")
    script.chmod(0o755)
    native = subprocess.run(["/bin/sh", "-c", f"exec {script}"], capture_output=True, env=GUEST_ENV)
    assert native.returncode in (126, 127)  # the kernel (or env) refuses it too
    proc = run_cannoli("record", "-o", tmp_path / "t", script)
    assert_clean_error(proc, str(script), says)
    assert not (tmp_path / "t").exists()


# EM_AVR: QEMU has no user-mode emulator for it; EM_PPC64: QEMU runs it, Cannoli DB has no tables for it
@pytest.mark.parametrize("e_machine, name", [(83, "EM_AVR"), (21, "EM_PPC64")])
def test_architecture_not_supported(tmp_path, e_machine, name):
    program = tmp_path / "firmware"
    fake_elf(program, e_machine)
    proc = run_cannoli("record", "-o", tmp_path / "t", program)
    assert_clean_error(proc, name, "not an architecture Cannoli DB records", "mipsel")
    assert not (tmp_path / "t").exists()


def test_missing_qemu(guest, tmp_path):
    env = dict(GUEST_ENV, PATH=str(tmp_path / "empty-bin"))
    (tmp_path / "empty-bin").mkdir()
    proc = run_cannoli("record", "-o", tmp_path / "t", guest("known_stores"), env=env)
    assert_clean_error(proc, "qemu-x86_64 not found", "apt-get install qemu-user")
    assert not (tmp_path / "t").exists()


def test_qemu_option_not_executable(guest, tmp_path):
    (tmp_path / "nope").write_text("not qemu\n")  # exists, no execute permission
    proc = run_cannoli("record", "--qemu", tmp_path / "nope", "-o", tmp_path / "t", guest("known_stores"))
    assert_clean_error(proc, "--qemu", "not an executable")


def test_missing_compiler(guest, tmp_path):
    env = dict(GUEST_ENV, CANNOLI_CACHE=str(tmp_path / "empty-cache"), CC=str(tmp_path / "no-such-cc"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(shutil.which("qemu-x86_64"), bin_dir / "qemu-x86_64")
    env["PATH"] = str(bin_dir)
    proc = run_cannoli("record", "-o", tmp_path / "t", guest("known_stores"), env=env)
    assert_clean_error(proc, "compiler")
    assert not (tmp_path / "t").exists()


def test_plugin_rejected_by_qemu_leaves_no_trace(guest, tmp_path):
    # an option QEMU itself refuses: the plugin never runs, nothing is recorded
    proc = run_cannoli("record", "--qemu-option=-cpu", "--qemu-option=no-such-cpu", "-o", tmp_path / "t",
                       guest("known_stores"))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "before the program started" in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("args", [["record"], ["record", "--ring-lanes", "0", "x"], ["info"]])
def test_usage_errors_are_one_line_without_traceback(args):
    proc = run_cannoli(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "Error:" in proc.stderr
