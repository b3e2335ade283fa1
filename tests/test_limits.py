"""Long runs and full disks: `--max-size` and the free-space margin stop a
recording cleanly (the guest is stopped, every chunk stays valid, the trace
indexes and says it is incomplete and why), and the live line a terminal
shows while recording, which a pipe does not."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys

import pytest

from cannoli_db import Trace
from cannoli_db.decode import chunk_files, decode_chunk_file

from .conftest import GUEST_ENV, read_meta, run_cannoli


def test_max_size_stops_a_long_guest_with_a_valid_incomplete_trace(guest, tmp_path):
    trace = tmp_path / "long.cannoli"
    proc = run_cannoli("record", "--max-size", "16M", "-o", trace, guest("busy_loop"), "120", "noise", timeout=300)
    assert "stopped by the recorder (max size reached" in proc.stderr, proc.stderr
    assert "INCOMPLETE: max size reached" in proc.stderr  # the index that followed
    meta = read_meta(trace)
    written = meta["counts"]["bytes_on_disk"]  # what recording wrote (the index then moved rows to the store)
    # the guest would have run 120 s: it was stopped a few chunks past the size
    assert 16 << 20 <= written < 64 << 20 and meta["wall_time_s"] < 60
    for chunk in chunk_files(trace):
        decode_chunk_file(chunk)
    assert meta["complete"] is False and meta["incomplete_reason"].startswith("max size reached")
    with Trace.open(trace) as t:
        assert t.meta["index_complete"] is False and t.sql("SELECT count(*) FROM exec").rows[0][0] > 0
    assert "INCOMPLETE: max size reached" in run_cannoli("info", trace).stdout


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    assert done.returncode == 0, f"this test mounts a small tmpfs as root: {done.stderr}"
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_filling_disk_stops_the_recording_cleanly(guest, small_disk):
    trace = small_disk / "t.cannoli"
    proc = run_cannoli("record", "--no-index", "-o", trace, guest("busy_loop"), "120", "noise", timeout=300)
    assert "Traceback" not in proc.stderr
    assert "stopped by the recorder (disk space" in proc.stderr, proc.stderr
    meta = read_meta(trace)
    assert meta["complete"] is False and meta["incomplete_reason"].startswith("disk space")
    assert not list((trace / "chunks").glob(".*")), "a partial chunk was left behind"
    chunks = chunk_files(trace)
    assert chunks
    for chunk in chunks:
        decode_chunk_file(chunk)
    # no room left for the store: the index says so with the numbers, and changes nothing
    index = run_cannoli("index", trace)
    assert index.returncode == 1 and index.stderr.count("\n") == 1, index.stderr
    assert "not enough disk space" in index.stderr and "MiB" in index.stderr
    assert not (trace / "trace.duckdb").exists()


def live_output(args, seconds: float = 120) -> str:
    """What `cannoli record` writes on stderr when stderr is a terminal (a pty)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cannoli_db.cli", *map(str, args)], env=GUEST_ENV,
                            stdout=subprocess.DEVNULL, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], seconds)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_shows_a_live_line_and_a_pipe_does_not(guest, tmp_path):
    args = ["record", "--no-index", "-o", tmp_path / "a.cannoli", guest("busy_loop"), "3"]
    shown = live_output(args)
    assert "cannoli: recording:" in shown and " instructions, " in shown and "MiB on disk" in shown, shown
    piped = run_cannoli("record", "--no-index", "-o", tmp_path / "b.cannoli", guest("busy_loop"), "1")
    assert "cannoli: recording:" not in piped.stderr and piped.stderr.count("\n") == 1
