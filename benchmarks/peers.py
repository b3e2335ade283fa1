#!/usr/bin/env python3
"""Cannoli DB beside the tools users compare it with, side by side in one run
on one workload: Debian's ``/usr/bin/xz -k -c`` of ``--text-mb`` MB of
generated text (the text of benchmarks/record_speed.py).

Rows, each run back to back:

* plain ``qemu-x86_64`` 7.2 (Debian's) and 10 (``cannoli setup-qemu``'s);
* ``cannoli record`` on 7.2 (callbacks) and on 10 (records from generated
  code): blocks only, with memory, with memory and registers;
* QEMU 10's own log, ``-d exec,nochain`` (one line per executed block);
* QEMU's contrib ``execlog`` plugin, built from the same source tree as the
  QEMU 10 (``cannoli setup-qemu`` keeps its ``execlog.c``), default options:
  one line per executed instruction with its memory accesses;
* valgrind's lackey, ``--trace-mem=yes`` (one line per instruction fetch and
  data access), on xz natively.

Printed per row: wall time, its ratio to plain QEMU 10, guest instructions
per second and bytes per instruction of what the tool keeps (the chunks on
disk; the text log for the others, counted through a pipe so that no disk
fills).  Instructions: Cannoli DB's exact count of the same QEMU's run (both
QEMU logs run the same guest code), lackey's own count for valgrind.

    python3 benchmarks/peers.py --text-mb 0.25      # about five minutes on 2 cores
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness import CANNOLI, qemu10_build, scratch, timed
from record_speed import XZ, generated_text
from rich.console import Console
from rich.table import Table

# name -> cannoli record options; the QEMU is given per row
CANNOLI_ROWS = {
    "cannoli 7.2 blocks": ("system", ["--no-mem"]),
    "cannoli 7.2 mem": ("system", []),
    "cannoli 10 blocks": ("built", ["--no-mem", "--no-regs"]),
    "cannoli 10 mem": ("built", ["--no-regs"]),
    "cannoli 10 mem+regs": ("built", []),
}


class Counted:
    """A child whose stderr is counted (bytes, and the last 64 KiB kept), not stored."""

    def __init__(self, cmd: list[str]):
        self.bytes = 0
        self.tail = b""
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        reader = threading.Thread(target=self._count, args=(proc.stderr,))
        reader.start()
        self.status = proc.wait()
        reader.join()
        self.wall = time.perf_counter() - start
        if self.status != 0:
            sys.exit(f"failed ({self.status}): {' '.join(cmd)}\n{self.tail[-600:].decode(errors='replace')}")

    def _count(self, pipe) -> None:
        while block := pipe.read(1 << 20):
            self.bytes += len(block)
            self.tail = (self.tail + block)[-(64 << 10):]


def build_execlog(source: Path, header_dir: Path, work: Path) -> Path:
    glib = subprocess.run(["pkg-config", "--cflags", "glib-2.0"], capture_output=True, text=True, check=True)
    out = work / "libexeclog.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", f"-I{header_dir}", *glib.stdout.split(), "-o", str(out),
                    str(source)], check=True)
    return out


def record_row(qemu: str, options: list[str], argv: list[str], trace: Path) -> tuple[float, int, int]:
    """(wall, instructions, bytes on disk) of one `cannoli record`."""
    wall, meta = timed("cannoli record", [*CANNOLI, "record", "--no-index", "--force", "--qemu", qemu, *options,
                                          "-o", str(trace), *argv], trace)
    return wall, meta["counts"]["instructions"], meta["counts"]["bytes_on_disk"]


def lackey_instructions(tail: bytes) -> int:
    m = re.search(rb"guest instrs\s*:\s*([\d,]+)", tail)
    if not m:
        sys.exit("lackey printed no instruction count")
    return int(m[1].replace(b",", b""))


def measure(argv: list[str], qemu10: Path, execlog: Path | None, console: Console) -> list[tuple]:
    rows = []

    def note(name, wall, insns, kept):
        console.print(f"  {name}: {wall:.2f} s")
        rows.append((name, wall, insns, kept))

    for label, qemu in (("plain QEMU 7.2", shutil.which("qemu-x86_64")), ("plain QEMU 10", str(qemu10))):
        note(label, Counted([qemu, *argv]).wall, None, None)
    insns = {}
    for name, (qemu, options) in CANNOLI_ROWS.items():
        wall, n, kept = record_row(qemu, options, argv, Path(argv[-1]).parent / "trace.cannoli")
        insns[qemu] = n
        note(name, wall, n, kept)
    log = Counted([str(qemu10), "-d", "exec,nochain", "-D", "/dev/stderr", *argv])
    note("QEMU 10 -d exec,nochain", log.wall, insns["built"], log.bytes)
    if execlog is not None:
        log = Counted([str(qemu10), "-plugin", str(execlog), "-d", "plugin", "-D", "/dev/stderr", *argv])
        note("QEMU 10 contrib execlog", log.wall, insns["built"], log.bytes)
    if shutil.which("valgrind"):
        log = Counted(["valgrind", "--tool=lackey", "--trace-mem=yes", "--log-fd=2", *argv])
        note("valgrind lackey --trace-mem", log.wall, lackey_instructions(log.tail), log.bytes)
    return rows


def table(rows: list[tuple]) -> Table:
    plain = next(wall for name, wall, _, _ in rows if name == "plain QEMU 10")
    t = Table(title="Recording xz side by side (one run, this machine)")
    for c in ("tool", "wall s", "x plain QEMU 10", "guest insn/s", "B/insn kept"):
        t.add_column(c, justify="left" if c == "tool" else "right")
    for name, wall, insns, kept in rows:
        t.add_row(name, f"{wall:.2f}", f"{wall / plain:.2f}x", f"{insns / wall:.3g}" if insns else "",
                  f"{kept / insns:.3f}" if kept is not None and insns else "")
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text-mb", type=float, default=0.25, metavar="MB", help="text xz compresses (default 0.25)")
    args = ap.parse_args()
    build = qemu10_build()
    console = Console(width=160)
    with scratch("cannoli-peers-") as work:
        execlog = None
        if build.execlog_source.is_file():
            execlog = build_execlog(build.execlog_source, build.plugin_header.parent, work)
        else:
            console.print("execlog left out: this QEMU build predates keeping execlog.c "
                          "(`cannoli setup-qemu --force` rebuilds)")
        text = generated_text(work / "text.txt", args.text_mb)
        rows = measure([XZ, "-k", "-c", str(text)], build.qemu("x86_64"), execlog, console)
    console.print(table(rows))
    console.print("B/insn kept: the chunks on disk for cannoli (zstd), the uncompressed text log for the others.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
