#!/usr/bin/env python3
"""Heap-write tracker: which instructions write to the brk heap, how often, and
how many distinct heap addresses they write.

Usage: python3 examples/heap_writes.py TRACE [--top N]

The heap is the range the program's brk calls grew (mmaps rows of kind 'brk').
Per span of positions (in worker processes): select the writes that fall in the heap and
count them per pc; in trace order: merge the counts and keep, per pc, the first
position it wrote the heap.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from cannoli_db import Analysis, Trace


class HeapWrites(Analysis):
    tables = {"mem": ["idx", "pc", "addr", "size", "is_write"]}

    def __init__(self, heap_start: int, heap_end: int):
        self.heap = (heap_start, heap_end)
        self.writes: Counter[int] = Counter()
        self.first_write: dict[int, int] = {}
        self.addresses: list[np.ndarray] = []

    def per_span(self, span):
        mem = span.mem
        start, end = self.heap
        hit = mem["is_write"] & (mem["addr"] >= start) & (mem["addr"] < end)
        pcs, idx, addrs = mem["pc"][hit], mem["idx"][hit], mem["addr"][hit]
        unique_pcs, first, counts = np.unique(pcs, return_index=True, return_counts=True)
        return unique_pcs, idx[first], counts, np.unique(addrs)

    def ordered(self, result) -> None:
        pcs, first_idx, counts, addrs = result
        for pc, idx, n in zip(pcs.tolist(), first_idx.tolist(), counts.tolist()):
            self.writes[pc] += n
            self.first_write.setdefault(pc, idx)  # spans arrive in trace order
        self.addresses.append(addrs)

    def finish(self) -> dict:
        distinct = np.unique(np.concatenate(self.addresses)) if self.addresses else np.array([], np.uint64)
        return {"writes": self.writes, "first_write": self.first_write, "distinct_addresses": len(distinct)}


def heap_range(trace: Trace) -> tuple[int, int] | None:
    (start, end), = trace.sql("SELECT min(start), max(\"end\") FROM mmaps WHERE kind = 'brk'").rows
    return None if start is None else (start, end)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    with Trace.open(args.trace) as trace:
        heap = heap_range(trace)
        if heap is None:
            raise SystemExit("this program never grew a brk heap")
        result = trace.analyze(HeapWrites(*heap))
        print(f"heap {heap[0]:#x}-{heap[1]:#x}: {sum(result['writes'].values()):,} writes by "
              f"{len(result['writes'])} instructions to {result['distinct_addresses']:,} distinct addresses")
        for pc, n in result["writes"].most_common(args.top):
            print(f"{n:>12,}  {pc:#014x}  {trace.symbol(pc):<40} first at {result['first_write'][pc]}")


if __name__ == "__main__":
    main()
