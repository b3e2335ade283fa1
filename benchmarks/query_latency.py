"""Who-wrote and value-at latency on a trace of about 100 million memory accesses.

Records `workloads/mem_stream.c` (50 M read-modify-writes at pseudo-random
slots of a 64 MiB table: 100 M accesses), indexes it (the index cost, and the
peak memory, are printed), then times, through the
Python API on a warm connection:

* who_wrote(addr, size=8) at addresses sampled from the trace;
* memory_at(random position, addr, 16);
* the same question asked as plain SQL of `mem` (a full scan), in the same
  run, as the yardstick the address index (mem_lines) is measured against.

Targets (issue 5): who-wrote and value-at under 100 ms.  Run from the
repository root (about two minutes, 2 GB of disk under /tmp):

    python3 benchmarks/query_latency.py [--iterations 50000000] [--samples 100] [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness import CANNOLI, WORKLOADS, build, record, run_measured, scratch

from cannoli_db import Trace

WORKLOAD = WORKLOADS / "mem_stream.c"
TARGET_MS = 100.0


def timings(func, inputs) -> list[float]:
    out = []
    for item in inputs:
        started = time.perf_counter()
        func(item)
        out.append((time.perf_counter() - started) * 1000)
    return sorted(out)


def row(table: Table, name: str, ms: list[float]) -> None:
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    verdict = "PASS" if p95 < TARGET_MS else "MISS"
    table.add_row(name, str(len(ms)), f"{ms[len(ms) // 2]:.1f}", f"{p95:.1f}", f"{ms[-1]:.1f}", verdict)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=50_000_000, help="guest loop iterations (2 accesses each)")
    ap.add_argument("--samples", type=int, default=100, help="questions per kind")
    ap.add_argument("--keep", type=Path, help="keep the trace in this directory")
    args = ap.parse_args()
    with scratch("cannoli-query-bench-") as work:
        exe = build(WORKLOAD, work)
        trace = (args.keep or work) / "mem_stream.cannoli"
        record(exe, [str(args.iterations)], trace, index=False)
        index_wall, _, index_rss = run_measured([*CANNOLI, "index", str(trace)])
        measure(trace, index_wall, index_rss, args.samples)


def measure(trace: Path, index_wall: float, index_rss: int, samples: int) -> None:
    rng = random.Random(7)
    with Trace.open(trace) as t:
        n_mem = t.sql("SELECT count(*) FROM mem").rows[0][0]
        end = t.meta["index_instructions"]
        addrs = [r[0] for r in t.sql(f"SELECT addr FROM mem USING SAMPLE {samples} ROWS").rows]
        who = timings(lambda a: t.who_wrote(a, size=8), addrs)
        at = timings(lambda a: t.memory_at(rng.randrange(end), a, 16), addrs)
        scan = timings(lambda a: t.sql("SELECT max(idx) FROM mem WHERE is_write AND addr = $a", {"a": a}),
                       addrs[: max(3, samples // 10)])

    console = Console()
    facts = Table(title=f"query latency on {n_mem:,} memory accesses ({end:,} instructions)")
    for col in ("question", "n", "median ms", "p95 ms", "max ms", "target < 100 ms"):
        facts.add_column(col, justify="right")
    row(facts, "who_wrote (8 bytes)", who)
    row(facts, "memory_at (16 bytes)", at)
    row(facts, "full scan of mem (yardstick)", scan)
    console.print(facts)
    console.print(f"who_wrote is {scan[len(scan) // 2] / who[len(who) // 2]:.1f}x faster than a scan of mem "
                  f"(medians, same run)")
    console.print(f"index build: {index_wall:.1f} s wall; peak RSS {index_rss / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
