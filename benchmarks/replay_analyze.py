"""Replay speed and analysis throughput, measured side by side in one run.

Records `workloads/mem_stream.c` (default 20 M iterations: about 220 M
instructions, 20 M blocks and 40 M memory accesses), indexes it, then:

* replay: `cannoli replay TRACE --range S:+1000000` to /dev/null, text and
  jsonl, wall time of the whole command (Python start-up included);
* analyze: a trivial analysis (count the events each chunk holds) through
  Trace.analyze on 2 worker processes, once reading only `idx` of exec and mem,
  once reading every column; events per second.

Targets (issue 6): replay of 1 M instructions under 10 s; analyze at least
50 M events/s on 2 cores.  Run from the repository root:

    python3 benchmarks/replay_analyze.py [--iterations N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness import CANNOLI, WORKLOADS, build, record, scratch

from cannoli_db import Analysis, Trace

WORKLOAD = WORKLOADS / "mem_stream.c"
REPLAY_INSNS = 1_000_000
TARGET_REPLAY_S = 10.0
TARGET_EVENTS_PER_S = 50e6


class CountEvents(Analysis):
    def __init__(self, tables: dict[str, list[str]] | None = None):
        if tables is not None:
            self.tables = tables
        self.events = 0

    def per_span(self, span) -> int:
        return span.events

    def ordered(self, result: int) -> None:
        self.events += result

    def finish(self) -> int:
        return self.events


def timed(func) -> tuple[float, object]:
    started = time.perf_counter()
    result = func()
    return time.perf_counter() - started, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20_000_000)
    ap.add_argument("--keep", type=Path, help="keep the trace in this directory")
    args = ap.parse_args()
    with scratch("cannoli-replay-bench-") as work:
        exe = build(WORKLOAD, work)
        trace = (args.keep or work) / "mem_stream.cannoli"
        record(exe, [str(args.iterations)], trace, index=True)
        measure(trace, CANNOLI)


def measure(trace: Path, cannoli: list[str]) -> None:
    with Trace.open(trace) as t:
        total = t.meta["index_instructions"]
    start = max(0, total // 2 - REPLAY_INSNS // 2)
    console = Console()
    replay = Table(title=f"replay of {REPLAY_INSNS:,} instructions (trace of {total:,})")
    for col in ("format", "wall s", "instructions/s", "target < 10 s"):
        replay.add_column(col, justify="right")
    for fmt in ("text", "jsonl"):
        wall, _ = timed(lambda: subprocess.run(
            [*cannoli, "replay", str(trace), "--range", f"{start}:+{REPLAY_INSNS}", "--format", fmt],
            check=True, stdout=subprocess.DEVNULL))
        replay.add_row(fmt, f"{wall:.2f}", f"{REPLAY_INSNS / wall:,.0f}", "PASS" if wall < TARGET_REPLAY_S else "MISS")
    console.print(replay)

    analyze = Table(title="Trace.analyze, trivial analysis, 2 worker processes")
    for col in ("columns read", "events", "wall s", "events/s", "target >= 50 M/s"):
        analyze.add_column(col, justify="right")
    with Trace.open(trace) as t:
        for label, tables in (("idx only", {"exec": ["idx"], "mem": ["idx"]}), ("all columns", None)):
            wall, events = timed(lambda: t.analyze(CountEvents(tables), workers=2))
            rate = events / wall
            analyze.add_row(label, f"{events:,}", f"{wall:.2f}", f"{rate / 1e6:.1f} M",
                            "PASS" if rate >= TARGET_EVENTS_PER_S else "MISS")
    console.print(analyze)


if __name__ == "__main__":
    main()
