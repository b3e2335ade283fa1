#!/usr/bin/env python3
"""Recording speed on QEMU 10: plain QEMU, the callback path and the inline path
(qemu_patches/0004: records written by QEMU's generated code), side by side in
one run.

Workloads: Debian's ``/usr/bin/xz -k -c`` of ``--text-mb`` MB of generated
text (words drawn with a fixed seed), and ``benchmarks/workloads/*.c`` (built
``cc -O2 -static``).  For each, back to back for every repetition:

* plain ``qemu-x86_64 PROG`` (the QEMU that ``cannoli setup-qemu`` built);
* ``cannoli record`` with ``--callbacks`` and with ``--inline`` (the default),
  block-only (``--no-mem --no-regs``), with memory (``--no-regs``) and with
  memory and registers (the default).

Printed per mode: wall time and its ratio to plain QEMU, guest instructions
per second (the recording's exact count over the wall time), bytes per
instruction on disk and before compression, and the CPU seconds of QEMU and
of the recorder (drain loop and zstd threads) apart, from the recording's
meta.json: on 2 cores their sum, not QEMU alone, decides the wall time once
the callbacks are gone.  Minimum wall over ``--repeat`` runs (the machine is
shared and noisy: compare ratios measured in one run).

Run from the repository root (about ten minutes on 2 cores for xz alone)::

    python3 benchmarks/record_speed.py --workload xz
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from harness import CANNOLI, WORKLOADS, build, qemu10_build, scratch, timed
from rich.console import Console
from rich.table import Table

XZ = "/usr/bin/xz"
# mode -> cannoli record options (None: plain QEMU)
MODES = {
    "plain": None,
    "callbacks blocks": ["--callbacks", "--no-mem", "--no-regs"],
    "inline blocks": ["--no-mem", "--no-regs"],
    "callbacks mem": ["--callbacks", "--no-regs"],
    "inline mem": ["--no-regs"],
    "callbacks mem+regs": ["--callbacks"],
    "inline mem+regs": [],
}


def generated_text(path: Path, megabytes: float, seed: int = 15) -> Path:
    """Text of random lower-case words (a fixed vocabulary and seed): xz finds
    real repetition in it, as in prose, and every run compresses the same bytes."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    lines, size = [], 0
    while size < megabytes * 1e6:
        line = " ".join(rng.choice(words) for _ in range(12)) + "\n"
        lines.append(line)
        size += len(line)
    path.write_text("".join(lines))
    return path


def run_mode(mode: str, argv: list[str], qemu_dir: str, trace: Path) -> tuple[float, dict | None]:
    options = MODES[mode]
    if options is None:
        return timed(mode, [str(Path(qemu_dir) / "qemu-x86_64"), *argv])
    return timed(mode, [*CANNOLI, "record", "--no-index", "--force", "--qemu", qemu_dir, *options,
                        "-o", str(trace), *argv], trace)


def measure(name: str, argv: list[str], qemu_dir: str, repeat: int, work: Path, console: Console):
    best: dict[str, float] = {}
    metas: dict[str, dict] = {}
    for rep in range(repeat):
        for mode in MODES:
            elapsed, meta = run_mode(mode, argv, qemu_dir, work / "trace.cannoli")
            console.print(f"  {name}: {mode} (run {rep + 1}/{repeat}) {elapsed:.2f} s")
            if elapsed < best.get(mode, float("inf")):
                best[mode] = elapsed
                if meta:
                    metas[mode] = meta
    return best, metas


def table(rows) -> Table:
    t = Table(title="cannoli record on QEMU 10: callbacks vs inline records (qemu_patches/0004)")
    columns = ("workload", "mode", "wall s", "x plain", "guest insn/s", "B/insn disk", "B/insn raw",
               "QEMU CPU s", "recorder CPU s", "inline")
    for c in columns:
        t.add_column(c, justify="left" if c in ("workload", "mode") else "right")
    for name, best, metas in rows:
        plain = best["plain"]
        for mode, wall in best.items():
            meta = metas.get(mode)
            if meta is None:
                t.add_row(name, mode, f"{wall:.2f}", "1.00x", "", "", "", "", "", "")
                continue
            counts, cpu = meta["counts"], meta.get("cpu_seconds", {})
            insns = max(1, counts["instructions"])
            t.add_row(name, mode, f"{wall:.2f}", f"{wall / plain:.2f}x", f"{insns / wall:.3g}",
                      f"{counts['bytes_on_disk'] / insns:.3f}", f"{counts['raw_bytes'] / insns:.3f}",
                      f"{cpu.get('qemu', 0):.2f}", f"{cpu.get('recorder', 0):.2f}",
                      "yes" if meta.get("inline_records") else "no")
    return t


def qemu10_dir(explicit: str | None) -> str:
    return explicit or str(qemu10_build().bin_dir)


def main() -> int:
    workloads = ["xz", *sorted(p.stem for p in WORKLOADS.glob("*.c"))]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=workloads, action="append", help="repeatable; default: all")
    ap.add_argument("--repeat", type=int, default=1, metavar="N")
    ap.add_argument("--text-mb", type=float, default=1.2, metavar="MB", help="text xz compresses (default 1.2)")
    ap.add_argument("--qemu10", metavar="DIR", help="directory of qemu-x86_64 (default: the setup-qemu build)")
    args = ap.parse_args()
    qemu_dir = qemu10_dir(args.qemu10)
    console = Console(width=200)
    rows = []
    with scratch("cannoli-record-speed-") as work:
        for name in args.workload or workloads:
            if name == "xz":
                text = generated_text(work / "text.txt", args.text_mb)
                argv = [XZ, "-k", "-c", str(text)]
            else:
                argv = [str(build(WORKLOADS / f"{name}.c", work))]
            rows.append((name, *measure(name, argv, qemu_dir, args.repeat, work, console)))
    console.print(table(rows))
    console.print("wall: `cannoli record` (or plain QEMU) end to end; x plain: over plain QEMU 10 in this run; "
                  "CPU: user + system seconds of QEMU and of the recorder process, from meta.json.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
