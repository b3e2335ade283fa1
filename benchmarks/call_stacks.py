"""Call stacks at scale: the speed of the call/return walk and of Trace.stack.

Records `workloads/sort_random.c` with `--no-mem` (qsort: a comparison call per
step, so calls are dense), or takes an indexed trace given with --trace, then:

* walk: reads the main thread's executions from `exec` (at most --execs of
  them, in position order) and times the C walker alone on them
  (CallWalker.feed and finish), in ns per block execution; the index's own
  figure for the whole walk with its sort is meta.index_calls_seconds;
* stack: times Trace.stack at --samples random positions on a warm
  connection (target: < 100 ms each).

    python3 benchmarks/call_stacks.py [--scale 1] [--trace DIR] [--execs 200000000] [--samples 100]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from harness import WORKLOADS, build, record, scratch

from cannoli_db import Trace
from cannoli_db.index.calls import BlockCode, CallWalker

TARGET_MS = 100.0


def measure(trace: Path, execs: int, samples: int) -> None:
    with Trace.open(trace) as t:
        con = t._con
        arch = t.meta["arch"]
        n_exec = t.sql("SELECT count(*) FROM exec").rows[0][0]
        n_calls = t.sql("SELECT count(*) FROM calls").rows[0][0]
        tid = t.sql("SELECT tid FROM threads ORDER BY first_idx LIMIT 1").rows[0][0]
        started = time.perf_counter()
        code = BlockCode.from_database(con)
        e = con.execute("SELECT idx, block_id, icount FROM exec WHERE tid = ? ORDER BY idx LIMIT ?",
                        [tid, execs]).fetchnumpy()
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        walker = CallWalker(arch, code)
        classify_s = time.perf_counter() - started
        started = time.perf_counter()
        walker.start(tid, tid)
        walker.feed(tid, e["idx"], e["block_id"], e["icount"])
        rows = walker.finish()
        walk_s = time.perf_counter() - started
        end = t.meta["index_instructions"]
        rng = random.Random(7)
        positions = [rng.randrange(end) for _ in range(samples)]
        t.stack(positions[0])  # warm: the symbolizer and line tables load once
        ms, depths = [], []
        for p in positions:
            started = time.perf_counter()
            depths.append(len(t.stack(p)))
            ms.append((time.perf_counter() - started) * 1000)
        ms.sort()
        print(f"trace: {end:,} instructions, {n_exec:,} block executions, {n_calls:,} calls "
              f"(index: calls walked and loaded in {t.meta['index_calls_seconds']} s)")
        print(f"walk: {len(e['idx']):,} executions -> {rows.num_rows:,} frames in {walk_s:.2f} s = "
              f"{walk_s / max(len(e['idx']), 1) * 1e9:.1f} ns per block execution "
              f"(classifying {len(code.block_id):,} blocks: {classify_s:.2f} s; reading exec: {read_s:.1f} s)")
        p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
        print(f"Trace.stack at {samples} random positions: median {ms[len(ms) // 2]:.1f} ms, p95 {p95:.1f} ms, "
              f"max {ms[-1]:.1f} ms ({'PASS' if p95 < TARGET_MS else 'MISS'} < {TARGET_MS:.0f} ms); "
              f"frames: median {sorted(depths)[len(depths) // 2]}, max {max(depths)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=1, help="sort_random's scale (20 rounds each)")
    ap.add_argument("--trace", type=Path, help="an indexed trace to measure instead of recording one")
    ap.add_argument("--execs", type=int, default=200_000_000, help="executions the walk timing reads at most")
    ap.add_argument("--samples", type=int, default=100, help="Trace.stack positions")
    args = ap.parse_args()
    if args.trace:
        measure(args.trace, args.execs, args.samples)
        return
    with scratch("cannoli-calls-bench-") as work:
        exe = build(WORKLOADS / "sort_random.c", work)
        trace = work / "sort_random.cannoli"
        record(exe, [str(args.scale)], trace, index=True, options=["--no-mem"])
        measure(trace, args.execs, args.samples)


if __name__ == "__main__":
    main()
