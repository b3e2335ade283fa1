"""kill -9 at random moments: of the guest's QEMU, of the recorder, of
`cannoli index`.  Afterwards every chunk that exists decodes, `cannoli index`
indexes them and marks the trace incomplete, no process is left running, and
no temporary file survives the next index."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from cannoli_db import Trace
from cannoli_db.decode import decode_chunk_file

from .conftest import GUEST_ENV, read_meta, run_cannoli
from .test_ring import alive, children_of

ROUNDS = 3
SEED = int.from_bytes(os.urandom(4), "little")
rng = random.Random(SEED)


def start_recording(guest, trace: Path, seconds: str = "30") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cannoli_db.cli", "record", "--no-index", "-o", str(trace), str(guest("busy_loop")),
         seconds],
        env=GUEST_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def qemu_children(pid: int) -> list[int]:
    """The recorder's QEMU children (not the C compiler it runs first when the
    plugin is not built yet for this source)."""
    found = []
    for child in children_of(pid):
        try:
            if b"qemu-" in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0]:
                found.append(child)
        except OSError:
            continue
    return found


def running_qemu(recorder: subprocess.Popen) -> int:
    """QEMU's pid once the recorder started it, after a random further delay."""
    deadline = time.monotonic() + 120
    while not qemu_children(recorder.pid):
        assert time.monotonic() < deadline, "the recorder never started QEMU"
        time.sleep(0.02)
    time.sleep(rng.uniform(0.05, 0.6))
    (qemu,) = qemu_children(recorder.pid)
    return qemu


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains text (QEMU's names the trace dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes() and alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_gone(pid: int, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while alive(pid):
        assert time.monotonic() < deadline, f"{what} still running {seconds} s later (seed {SEED})"
        time.sleep(0.05)


def assert_chunks_whole_and_indexable(trace: Path) -> None:
    chunks = sorted((trace / "chunks").glob("*.zst"))
    for chunk in chunks:
        list(decode_chunk_file(chunk))  # raises on a partial or damaged chunk
    proc = run_cannoli("index", trace)
    assert proc.returncode == 0, f"seed {SEED}: {proc.stderr}"
    assert "INCOMPLETE" in proc.stderr
    assert not list((trace / "chunks").glob(".*")), "a temporary chunk file survived the index"
    assert sorted(p.name for p in trace.iterdir()) == ["chunks", "meta.json", "trace.duckdb"]
    assert not processes_mentioning(str(trace)), "a process of this recording is still running"
    with Trace.open(trace) as t:
        assert t.meta["index_complete"] is False
        assert t.sql("SELECT count(*) FROM exec").rows[0][0] > 0 or not chunks


def test_kill_qemu_at_random_moments(guest, tmp_path):
    for round_ in range(ROUNDS):
        trace = tmp_path / f"qemu{round_}.cannoli"
        recorder = start_recording(guest, trace)
        qemu = running_qemu(recorder)
        os.kill(qemu, signal.SIGKILL)
        _, stderr = recorder.communicate(timeout=120)
        assert recorder.returncode == 128 + signal.SIGKILL, f"seed {SEED}: {stderr}"
        assert "Traceback" not in stderr and "SIGKILL" in stderr
        meta = read_meta(trace)
        assert meta["complete"] is False and "SIGKILL" in meta["incomplete_reason"]
        assert_chunks_whole_and_indexable(trace)


def test_kill_recorder_at_random_moments(guest, tmp_path):
    for round_ in range(ROUNDS):
        trace = tmp_path / f"rec{round_}.cannoli"
        recorder = start_recording(guest, trace)
        qemu = running_qemu(recorder)
        recorder.send_signal(signal.SIGKILL)
        recorder.wait()
        wait_gone(qemu, "QEMU, after its recorder was killed,")
        assert read_meta(trace)["complete"] is False
        assert_chunks_whole_and_indexable(trace)


def test_kill_index_at_random_moments(guest, tmp_path):
    trace = tmp_path / "idx.cannoli"
    assert run_cannoli("record", "--no-index", "-o", trace, guest("busy_loop"), "0.4").returncode == 0
    assert run_cannoli("index", trace).returncode == 0
    with Trace.open(trace) as t:
        reference = t.sql("SELECT count(*), sum(idx), sum(icount) FROM exec").rows
    for _ in range(ROUNDS):
        child = subprocess.Popen([sys.executable, "-m", "cannoli_db.cli", "index", str(trace)],
                                 env=GUEST_ENV, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 2.5))
        child.send_signal(signal.SIGKILL)
        child.wait()
        # the old index stays whole until a new one replaces it in one rename
        with Trace.open(trace) as t:
            assert t.sql("SELECT count(*), sum(idx), sum(icount) FROM exec").rows == reference, f"seed {SEED}"
    assert run_cannoli("index", trace).returncode == 0
    assert sorted(p.name for p in trace.iterdir()) == ["chunks", "meta.json", "trace.duckdb"]
    with Trace.open(trace) as t:
        assert t.sql("SELECT count(*), sum(idx), sum(icount) FROM exec").rows == reference


def test_ctrl_c_stops_the_guest_and_keeps_an_indexed_interrupted_trace(guest, tmp_path):
    trace = tmp_path / "int.cannoli"
    recorder = subprocess.Popen(
        [sys.executable, "-m", "cannoli_db.cli", "record", "-o", str(trace), str(guest("busy_loop")), "30"],
        env=GUEST_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    running_qemu(recorder)
    os.killpg(recorder.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    _, stderr = recorder.communicate(timeout=300)
    assert recorder.returncode == 128 + signal.SIGINT, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr and "indexed" in stderr
    meta = read_meta(trace)
    assert meta["interrupted"] is True and meta["complete"] is False
    with Trace.open(trace) as t:
        assert t.meta["interrupted"] is True and t.sql("SELECT count(*) FROM exec").rows[0][0] > 0
    info = run_cannoli("info", trace)
    assert "interrupted" in info.stdout


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_long_recording_keeps_the_recorders_memory_flat(guest, tmp_path):
    trace = tmp_path / "long.cannoli"
    recorder = subprocess.Popen(
        [sys.executable, "-m", "cannoli_db.cli", "record", "--no-index", "--no-mem", "-o", str(trace),
         str(guest("busy_loop")), "60"],
        env=GUEST_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = {}
    started = time.monotonic()
    while recorder.poll() is None:
        samples[time.monotonic() - started] = rss_kib(recorder.pid)
        time.sleep(1)
    assert recorder.returncode == 0, recorder.stderr.read()
    early = max(v for t, v in samples.items() if 10 <= t < 20)
    late = max(v for t, v in samples.items() if t >= 40)
    # the recorder handles packets in fixed buffers: 40 s more recording may not cost 16 MiB more
    assert late - early < 16 * 1024, f"recorder RSS grew from {early} KiB to {late} KiB"
    assert read_meta(trace)["counts"]["instructions"] > 0
