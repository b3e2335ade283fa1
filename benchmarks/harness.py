"""What the benchmarks share: a scratch folder, building a workload, recording
it with the real CLI, and measuring a child process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CANNOLI = [sys.executable, "-m", "cannoli_db.cli"]
WORKLOADS = Path(__file__).resolve().parent / "workloads"


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build(source: Path, work: Path, opt: str = "-O2") -> Path:
    exe = work / source.stem
    subprocess.run(["cc", opt, "-static", "-o", str(exe), str(source)], check=True)
    return exe


def record(exe: Path, args: list[str], trace: Path, index: bool, options: tuple[str, ...] = ()) -> None:
    options = ["--force", "-o", str(trace), *options] + ([] if index else ["--no-index"])
    subprocess.run([*CANNOLI, "record", *options, str(exe), *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_measured(cmd: list[str]) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS bytes) of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def qemu10_build():
    """The `cannoli setup-qemu` build with qemu-x86_64, or exit saying how to make one."""
    from cannoli_db.native import qemu_build

    found = qemu_build.find_build(("x86_64",))
    if found is None:
        sys.exit("no QEMU 10 build: run `cannoli setup-qemu` first")
    return found


def timed(label: str, cmd: list[str], trace: Path | None = None) -> tuple[float, dict | None]:
    """Wall seconds of `cmd`; when it records `trace`, also that recording's
    meta.json (and the trace is removed: the benchmarks keep figures, not traces)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{label} failed: {proc.stderr.decode(errors='replace').strip()[-400:]}")
    if trace is None:
        return elapsed, None
    meta = json.loads((trace / "meta.json").read_text())
    shutil.rmtree(trace, ignore_errors=True)
    return elapsed, meta
