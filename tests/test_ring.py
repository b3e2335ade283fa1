"""The shared-memory ring (recorder/ring.py, qemu_patches/cannoli_ring.h):
nothing named is left behind, and QEMU stops rather than hangs when the
recorder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import GUEST_ENV


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_qemu_stops_with_a_message_when_the_recorder_dies(guest, tmp_path):
    recorder = subprocess.Popen(
        [sys.executable, "-m", "cannoli_db.cli", "record", "--no-index", "-o", tmp_path / "t.cannoli",
         guest("busy_loop"), "60"],
        env=GUEST_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not list((tmp_path / "t.cannoli" / "chunks").glob("*.zst")):
        assert time.monotonic() < deadline, "the recording never produced a chunk"
        time.sleep(0.05)
    (qemu,) = children_of(recorder.pid)
    recorder.send_signal(signal.SIGKILL)
    recorder.wait()
    # QEMU notices when the ring is full and nobody drains it
    deadline = time.monotonic() + 30
    while alive(qemu):
        assert time.monotonic() < deadline, "QEMU still running 30 s after the recorder died"
        time.sleep(0.1)
    stderr = recorder.stderr.read()
    assert "the recorder process" in stderr and "is gone" in stderr


def test_no_named_shared_memory_is_left(guest, record):
    before = set(os.listdir("/dev/shm"))
    proc, trace = record(guest("known_stores"))
    assert proc.returncode == 42
    assert set(os.listdir("/dev/shm")) - before == set()
