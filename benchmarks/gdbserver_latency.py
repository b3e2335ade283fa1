"""`cannoli gdbserver` latency on a trace of about 100 million instructions.

Records `workloads/mem_stream.c` (12 M read-modify-writes by default: ~96 M
instructions, 24 M memory accesses) with the QEMU that `cannoli setup-qemu`
built (so it has registers), then answers gdb's packets through a `Session`
on a warm connection and times each answer, split into the part spent in
`History.registers_at` (which today is `Trace.registers_at`) and the rest:

* `c` from position 0 to a breakpoint that is hit once, at the end (printf);
* `bc` from the end to a breakpoint hit once, near the start (main);
* `c` from 1 % of the way with a breakpoint that never hits again: a search to the end;
* `c` from position 0 and `bc` from the end to a write watchpoint on the table slot written last;
* `s` and `bs` (stepi / reverse-stepi) at the start, the middle and the end.

Targets (issue 16): continue to a breakpoint or watchpoint < 1 s; stepi and
reverse-stepi < 50 ms.  Run from the repository root (a few minutes):

    python3 benchmarks/gdbserver_latency.py [--iterations 12000000] [--steps 20] [--keep DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness import WORKLOADS, build, record, scratch

from cannoli_db import Trace
from cannoli_db.debug.history import History
from cannoli_db.debug.server import Session

WORKLOAD = WORKLOADS / "mem_stream.c"


class Timed(History):
    """History that adds up the seconds spent in registers_at."""

    regs_seconds = 0.0

    def registers_at(self, idx):
        started = time.perf_counter()
        try:
            return super().registers_at(idx)
        finally:
            self.regs_seconds += time.perf_counter() - started


def answer(session: Session, packet: str) -> tuple[float, float, bytes]:
    """(total ms, registers_at ms, reply) of one packet."""
    h = session.history
    h.regs_seconds = 0.0
    started = time.perf_counter()
    (reply,) = session.handle(packet.encode())
    return (time.perf_counter() - started) * 1000, h.regs_seconds * 1000, reply


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=12_000_000, help="guest loop iterations (~8 instructions each)")
    ap.add_argument("--steps", type=int, default=20, help="stepi / reverse-stepi per place")
    ap.add_argument("--keep", type=Path, help="keep the trace in this directory")
    args = ap.parse_args()
    with scratch("cannoli-gdbserver-bench-") as work:
        exe = build(WORKLOAD, work, "-O1")
        trace = (args.keep or work) / "mem_stream.cannoli"
        record(exe, [str(args.iterations)], trace, index=True, options=("--qemu", "built"))
        measure(trace, args.steps)


def measure(trace: Path, steps: int) -> None:
    rows = []
    with Trace.open(trace) as t:
        h = Timed(t)
        address = {name: t.address(name) for name in ("printf", "main")}
        (slot,) = t.sql("SELECT addr FROM mem WHERE is_write ORDER BY idx DESC LIMIT 1").rows[0]
        session = Session.open(h)
        rows.append(("c to a breakpoint at the end", answer_after(session, f"Z0,{address['printf']:x},1", "c")))
        session.handle(f"z0,{address['printf']:x},1".encode())
        rows.append(("bc to a breakpoint near the start", answer_after(session, f"Z0,{address['main']:x},1", "bc")))
        session.handle(f"z0,{address['main']:x},1".encode())
        session = Session.open(h, h.end // 100)
        rows.append(("c past a breakpoint that never hits again", answer_after(session, f"Z0,{address['main']:x},1", "c")))
        session.handle(f"z0,{address['main']:x},1".encode())
        session = Session.open(h)
        rows.append(("c to a write watchpoint", answer_after(session, f"Z2,{slot:x},8", "c")))
        session = Session.open(h, h.end - 1)
        rows.append(("bc from the end to a write watchpoint", answer_after(session, f"Z2,{slot:x},8", "bc")))
        for where, at in (("start", 0), ("middle", h.end // 2), ("end", h.end - 2 * steps - 2)):
            session = Session.open(h, at)
            forward = [answer(session, "s") for _ in range(steps)]
            backward = [answer(session, "bs") for _ in range(steps)]
            rows.append((f"s (stepi) at the {where}", median(forward)))
            rows.append((f"bs (reverse-stepi) at the {where}", median(backward)))
    show(rows, h.end)


def answer_after(session: Session, setup: str, packet: str):
    session.handle(setup.encode())
    return answer(session, packet)


def median(samples):
    return sorted(samples)[len(samples) // 2]


def show(rows, end: int) -> None:
    table = Table(title=f"gdbserver answers on {end:,} instructions")
    for col in ("packet", "total ms", "registers_at ms", "the rest ms", "stop"):
        table.add_column(col, justify="right")
    for name, (total, regs, reply) in rows:
        table.add_row(name, f"{total:.1f}", f"{regs:.1f}", f"{total - regs:.1f}", reply[:32].decode())
    Console().print(table)


if __name__ == "__main__":
    main()
