"""Every path a command takes (cannoli_db/paths.py), given missing, as a file
where a directory is needed (or the other way round), and on a read-only file
system: one stderr line naming the path and what is wrong, a non-zero exit, no
traceback, nothing created.  The tests run as root, whom permissions do not
stop, so "not writable" is a read-only tmpfs and a read-only bind mount."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from .conftest import GUEST_ENV, run_cannoli


@pytest.fixture(scope="module")
def place(guest, tmp_path_factory):
    """A directory with a trace (indexed), its Parquet export, a file, and read-only mounts:
    `ro` (an empty read-only tmpfs) and `ro-trace` (the trace, bind-mounted read-only)."""
    root = tmp_path_factory.mktemp("paths")
    proc = run_cannoli("record", "-o", root / "t.cannoli", guest("print_argv"))
    assert proc.returncode == 0, proc.stderr
    proc = run_cannoli("export", root / "t.cannoli", "--format", "parquet", "-o", root / "t-parquet")
    assert proc.returncode == 0, proc.stderr
    (root / "afile").write_text("not a trace\n")
    (root / "ro").mkdir()
    shutil.copytree(root / "t.cannoli", root / "ro-trace")
    mounted = []
    try:
        for cmd in (["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", root / "ro"],
                    ["mount", "--bind", "-o", "ro", root / "ro-trace", root / "ro-trace"]):
            done = subprocess.run(list(map(str, cmd)), capture_output=True, text=True)
            if done.returncode != 0:
                pytest.fail(f"{' '.join(map(str, cmd))} failed ({done.stderr.strip()}): these tests need root "
                            f"with mount rights for their read-only file systems")
            mounted.append(cmd[-1])
        yield root
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", str(point)], check=True)


def assert_one_line(proc, *words):
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def cases_for_trace_argument():
    """Every command that reads a trace, as (name, argv with TRACE in place of the trace)."""
    return {
        "info": ["info", "TRACE"],
        "index": ["index", "TRACE"],
        "sql": ["sql", "TRACE", "SELECT 1"],
        "query": ["query", "TRACE", "strace"],
        "who-wrote": ["who-wrote", "TRACE", "main"],
        "replay": ["replay", "TRACE", "--range", "0:10"],
        "memory": ["memory", "TRACE", "main", "8"],
        "export": ["export", "TRACE", "--format", "drcov", "-o", "OUT/x.drcov"],
    }


def fill(argv, place, trace):
    return [str(place / trace) if a == "TRACE" else a.replace("OUT", str(place)) for a in argv]


@pytest.mark.parametrize("command", sorted(cases_for_trace_argument()))
@pytest.mark.parametrize("trace, says", [("missing.cannoli", "no such trace directory"),
                                         ("afile", "is a file, not a trace directory")])
def test_trace_argument(place, command, trace, says):
    proc = run_cannoli(*fill(cases_for_trace_argument()[command], place, trace))
    assert_one_line(proc, str(place / trace), says)


def test_a_file_above_the_path_is_named(place):
    proc = run_cannoli("info", place / "afile" / "t.cannoli")
    assert_one_line(proc, f"{place / 'afile'} is a file, not a directory")


@pytest.mark.parametrize("command", sorted(cases_for_trace_argument()))
def test_read_only_trace(place, command):
    """Only `index` writes into the trace; every other command reads a read-only one."""
    (place / "x.drcov").unlink(missing_ok=True)
    proc = run_cannoli(*fill(cases_for_trace_argument()[command], place, "ro-trace"))
    if command == "index":
        assert_one_line(proc, str(place / "ro-trace"), "cannot write", "read-only file system")
    else:
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


OUTPUTS = {
    "record -o": (["record", "-o", "OUTPUT", "PROGRAM"], True),
    "export parquet -o": (["export", "TRACE", "--format", "parquet", "-o", "OUTPUT"], True),
    "export drcov -o": (["export", "TRACE", "--format", "drcov", "-o", "OUTPUT"], False),
    "export tenet -o": (["export", "TRACE", "--format", "tenet", "-o", "OUTPUT"], False),
}


@pytest.mark.parametrize("option", sorted(OUTPUTS))
@pytest.mark.parametrize("output, says", [("afile/sub/out", "is a file, not a directory"),
                                          ("afile/out", "is a file, not a directory"),
                                          ("ro/out", "read-only file system"),
                                          ("KIND", "where a")])
def test_output_option(place, guest, option, output, says):
    argv, is_dir = OUTPUTS[option]
    if output == "KIND":  # a file where a directory is written, or a directory where a file is
        output = "afile" if is_dir else "ro"
    argv = [str(place / output) if a == "OUTPUT" else str(guest("print_argv")) if a == "PROGRAM"
            else str(place / "t.cannoli") if a == "TRACE" else a for a in argv]
    proc = run_cannoli(*argv, cwd=place)
    assert_one_line(proc, f"-o {place / output}", says)


@pytest.mark.parametrize("folder, says", [("missing", "no such Parquet export directory"),
                                          ("afile", "is a file, not a Parquet export directory")])
def test_sql_parquet_folder(place, folder, says):
    proc = run_cannoli("sql", "--parquet", place / folder, "SELECT 1")
    assert_one_line(proc, f"--parquet {place / folder}", says)


def test_sql_parquet_folder_that_works(place):
    proc = run_cannoli("sql", "--parquet", place / "t-parquet", "SELECT count(*) AS n FROM threads", "--format",
                       "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [{"n": 1}]


@pytest.mark.parametrize("option, value, says", [
    ("--qemu", "missing", "no such file or directory"),
    ("--qemu", "afile/qemu-x86_64", "is a file, not a directory"),
    ("-L", "missing", "no such directory"),
    ("-L", "afile", "is a file, not a directory"),
])
def test_record_options(place, guest, option, value, says):
    proc = run_cannoli("record", option, place / value, "-o", place / "new.cannoli", guest("print_argv"))
    assert_one_line(proc, f"{option} {place / value}", says)
    assert not (place / "new.cannoli").exists()


@pytest.mark.parametrize("settings, says", [("missing.toml", "no such settings file"),
                                            ("ro", "is a directory, not a settings file"),
                                            ("afile/config.toml", "is a file, not a directory")])
def test_settings_file(place, guest, settings, says):
    env = dict(GUEST_ENV, CANNOLI_CONFIG=str(place / settings))
    proc = run_cannoli("record", "-o", place / "new.cannoli", guest("print_argv"), env=env)
    assert_one_line(proc, f"$CANNOLI_CONFIG {place / settings}", says)
    assert not (place / "new.cannoli").exists()
