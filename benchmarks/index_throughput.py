"""Index throughput and peak memory: record a workload with memory tracing,
then time `cannoli index` on it and print events per second (overall and per
CPU-second) and the indexer's peak resident memory next to the chunk size.

Both figures come from this run on this machine (shared and noisy: compare
ratios, not absolute times).  Run:  python3 benchmarks/index_throughput.py
[--seconds S] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness import CANNOLI, build, record, run_measured, scratch
from rich.console import Console
from rich.table import Table

from cannoli_db import Trace
from cannoli_db.decode import read_chunk_header

HERE = Path(__file__).parent
GUEST = HERE.parent / "tests" / "guests" / "busy_loop.c"
TARGET_EVENTS_PER_CORE = 10e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="how long the guest runs (trace size)")
    ap.add_argument("--keep", type=Path, help="keep the trace in this directory")
    args = ap.parse_args()
    with scratch("cannoli-index-bench-") as work:
        exe = build(GUEST, work, opt="-O1")
        trace = (args.keep or work) / "busy.cannoli"
        record(exe, [str(args.seconds)], trace, index=False)
        measure(trace)


def measure(trace: Path) -> None:
    chunks = sorted((trace / "chunks").glob("*.zst"))
    headers = [read_chunk_header(c.read_bytes()[:96], c.name) for c in chunks]
    largest_raw = max(int(h["side_raw"]) + int(h["heavy_raw"]) for h in headers)
    wall, cpu, rss = run_measured([*CANNOLI, "index", str(trace)])
    with Trace.open(trace) as t:
        events = sum(t.sql(f"SELECT count(*) FROM {name}").rows[0][0] for name in ("exec", "mem", "syscalls"))
        calls_s = t.meta["index_calls_seconds"]
    meta = json.loads((trace / "meta.json").read_text())
    table = Table(title="cannoli index: throughput and memory")
    for col in ("events", "chunks", "wall s", "CPU s", "events/s", "events per CPU-s", "peak RSS",
                "largest chunk (raw)", "RSS / chunk"):
        table.add_column(col, justify="right")
    table.add_row(f"{events:,}", str(len(chunks)), f"{wall:.2f}", f"{cpu:.2f}", f"{events / wall / 1e6:.2f} M",
                  f"{events / cpu / 1e6:.2f} M", f"{rss / 2**20:.0f} MiB", f"{largest_raw / 2**20:.1f} MiB",
                  f"{rss / largest_raw:.0f}x")
    console = Console()
    console.print(table)
    verdict = "PASS" if events / cpu >= TARGET_EVENTS_PER_CORE else "MISS"
    console.print(f"target >= 10 M events/s per core: {events / cpu / 1e6:.2f} M per CPU-second -> {verdict}")
    console.print(f"of the {wall:.1f} s, {calls_s:.1f} s went to the calls walk")
    console.print(f"guest instructions {meta['counts']['instructions']:,}; memory is bounded by the chunk window and "
                  f"DuckDB's memory_limit, not by trace length (compare RSS across --seconds values)")


if __name__ == "__main__":
    main()
