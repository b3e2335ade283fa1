#!/usr/bin/env python3
"""Recording overhead on QEMU 10 (plugin API 4) next to QEMU 7.2 (API 1), in one run.

For each workload in ``benchmarks/workloads/*.c`` (built ``cc -O2 -static``)
it times, back to back for every repetition:

* plain ``qemu-x86_64 PROG`` of each QEMU (no plugin);
* ``cannoli record --no-mem`` and ``cannoli record`` on each QEMU; on QEMU 10
  once with registers (the default there) and once with ``--no-regs``, so the
  cost of registers shows on its own.

Each recording is reported over plain QEMU *of the same version*: QEMU 10
itself runs at a different speed, and that is not Cannoli DB's overhead.  The
last columns compare QEMU 10 against 7.2 directly, and give the bytes per
instruction on disk.  Ratios, not seconds, are comparable across runs: the
machine is shared and noisy.  Minimum over ``--repeat`` runs.

QEMU 10 is the one ``cannoli setup-qemu`` built (or ``--qemu10 PATH``).
Run from the repository root (about four minutes on 2 cores for two workloads)::

    python3 benchmarks/qemu_versions.py --workload sort_random --workload text_processing
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from harness import CANNOLI, WORKLOADS, build, qemu10_build, scratch, timed
from rich.console import Console
from rich.table import Table

# mode -> (QEMU, cannoli record options or None for a plain QEMU run)
MODES = {
    "7.2 plain": ("7.2", None),
    "7.2 blocks": ("7.2", ["--no-mem"]),
    "7.2 mem": ("7.2", []),
    "10 plain": ("10", None),
    "10 blocks": ("10", ["--no-mem", "--no-regs"]),
    "10 blocks+regs": ("10", ["--no-mem"]),
    "10 mem": ("10", ["--no-regs"]),
    "10 mem+regs": ("10", []),
}


def run_mode(mode: str, exe: Path, qemus: dict[str, str], trace: Path) -> tuple[float, dict | None]:
    version, options = MODES[mode]
    if options is None:
        return timed(mode, [qemus[version], str(exe)])
    return timed(mode, [*CANNOLI, "record", "--no-index", "--force", "--qemu", qemus[version], *options,
                        "-o", str(trace), str(exe)], trace)


def measure(name: str, work: Path, qemus: dict[str, str], repeat: int, console: Console):
    exe = build(WORKLOADS / f"{name}.c", work)
    best: dict[str, float] = {}
    metas: dict[str, dict] = {}
    for rep in range(repeat):
        for mode in MODES:
            elapsed, meta = run_mode(mode, exe, qemus, work / "trace.cannoli")
            console.print(f"  {name}: {mode} (run {rep + 1}/{repeat}) {elapsed:.2f} s")
            best[mode] = min(elapsed, best.get(mode, float("inf")))
            if meta:
                metas[mode] = meta
    return best, metas


def bytes_per_insn(meta: dict) -> float:
    counts = meta["counts"]
    return counts["bytes_on_disk"] / max(1, counts["instructions"])


def table(rows) -> Table:
    t = Table(title="cannoli record on QEMU 10 vs QEMU 7.2 (each over plain QEMU of its own version)")
    columns = ("workload", "qemu10/qemu7.2 plain", "7.2 blocks", "10 blocks", "10 blocks+regs",
               "7.2 mem", "10 mem", "10 mem+regs", "B/insn 7.2 mem", "B/insn 10 mem+regs",
               "B/insn 10 blocks+regs")
    for c in columns:
        t.add_column(c, justify="left" if c == "workload" else "right")
    for name, best, metas in rows:
        def over(mode):
            return f"{best[mode] / best[mode.split()[0] + ' plain']:.2f}x"

        t.add_row(name, f"{best['10 plain'] / best['7.2 plain']:.2f}x",
                  over("7.2 blocks"), over("10 blocks"), over("10 blocks+regs"),
                  over("7.2 mem"), over("10 mem"), over("10 mem+regs"),
                  f"{bytes_per_insn(metas['7.2 mem']):.3f}", f"{bytes_per_insn(metas['10 mem+regs']):.3f}",
                  f"{bytes_per_insn(metas['10 blocks+regs']):.3f}")
    return t


def qemu10_path(explicit: str | None) -> str:
    return explicit or str(qemu10_build().qemu("x86_64"))


def main() -> int:
    workloads = sorted(p.stem for p in WORKLOADS.glob("*.c"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=workloads, action="append", help="repeatable; default: all")
    ap.add_argument("--repeat", type=int, default=1, metavar="N")
    ap.add_argument("--qemu72", default=shutil.which("qemu-x86_64"), help="QEMU 7.2 (default: from PATH)")
    ap.add_argument("--qemu10", help="QEMU 10 (default: the `cannoli setup-qemu` build)")
    args = ap.parse_args()
    if not args.qemu72:
        ap.error("qemu-x86_64 (7.2) not found")
    qemus = {"7.2": args.qemu72, "10": qemu10_path(args.qemu10)}
    console = Console(width=200)
    rows = []
    with scratch("cannoli-qemu-versions-") as work:
        for name in args.workload or workloads:
            rows.append((name, *measure(name, work, qemus, args.repeat, console)))
    console.print(table(rows))
    console.print("Each recording column: wall time of `cannoli record` over plain QEMU of the same version, "
                  "measured side by side in this run.  blocks = --no-mem; +regs = registers at block entry.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
