"""Export throughput and memory: Parquet and drcov of a ~150-million-event trace
(100 M memory accesses and 50 M block executions of `workloads/mem_stream.c`),
and Tenet of a smaller one (Tenet is text, one line per instruction).

Each export runs as a child `cannoli export` process; the table prints wall
time, events per second and the child's peak resident memory, which stays
bounded because DuckDB's COPY streams and the Tenet writer goes window by
window.  Run from the repository root (about two minutes):

    python3 benchmarks/export_throughput.py [--iterations 50000000]
"""

from __future__ import annotations

import argparse

from harness import CANNOLI, WORKLOADS, build, record, run_measured, scratch
from rich.console import Console
from rich.table import Table

from cannoli_db import Trace

WORKLOAD = WORKLOADS / "mem_stream.c"


def events(trace) -> int:
    with Trace.open(trace) as t:
        return sum(t.sql(f"SELECT count(*) FROM {name}").rows[0][0] for name in ("exec", "mem", "syscalls"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=50_000_000)
    ap.add_argument("--tenet-iterations", type=int, default=500_000)
    args = ap.parse_args()
    table = Table(title="cannoli export")
    for col in ("format", "events", "wall s", "events/s", "peak RSS"):
        table.add_column(col, justify="right")
    with scratch("cannoli-export-bench-") as work:
        exe = build(WORKLOAD, work)
        big, small = work / "big.cannoli", work / "small.cannoli"
        record(exe, [str(args.iterations)], big, index=True)
        record(exe, [str(args.tenet_iterations)], small, index=True)
        runs = [("parquet", big, work / "big.parquet"), ("drcov", big, work / "big.drcov"),
                ("tenet", small, work / "small.tenet")]
        for fmt, trace, out in runs:
            wall, _, rss = run_measured([*CANNOLI, "export", fmt, str(trace), "-o", str(out)])
            n = events(trace)
            table.add_row(fmt, f"{n:,}", f"{wall:.2f}", f"{n / wall / 1e6:.1f} M", f"{rss / 2**20:.0f} MiB")
    Console().print(table)


if __name__ == "__main__":
    main()
