"""Trace.analyze and the two shipped example analyses (examples/insn_mix.py,
examples/heap_writes.py), checked against the independent instruction counter,
QEMU's -strace, and a guest with a known number of heap stores."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cannoli_db import Analysis, CannoliError, Trace

from .conftest import GUEST_ENV, function_containing

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # worker processes unpickle the analysis by module name
    spec.loader.exec_module(module)
    return module


class Positions(Analysis):
    """Collects (first_idx, events) per span, to check order and coverage."""

    tables = {"exec": ["idx", "icount"], "mem": ["idx"]}

    def __init__(self):
        self.seen = []

    def per_span(self, span):
        return span.first_idx, span.end_idx, int(span.exec["icount"].sum()), len(span.mem["idx"]), \
            bool(np.all(np.diff(span.exec["idx"].astype(np.int64)) >= 0))

    def ordered(self, result):
        self.seen.append(result)

    def finish(self):
        return self.seen


def test_spans_arrive_in_order_and_cover_every_event(recorded):
    trace, _, counted = recorded("threads", "3", "2000")
    with Trace.open(trace) as t:
        seen = t.analyze(Positions(), workers=2)
        mem_rows = t.sql("SELECT count(*) FROM mem").rows[0][0]
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)
    assert all(a[1] == b[0] for a, b in zip(seen, seen[1:]))
    assert sum(s[2] for s in seen) == counted  # each block counted once, in the span it starts in
    assert sum(s[3] for s in seen) == mem_rows
    assert all(s[4] for s in seen)


def test_instruction_mix_example_counts_every_instruction(guest, recorded, qemu_strace):
    trace, _, counted = recorded("history", "3")
    mix = load_example("insn_mix")
    with Trace.open(trace) as t:
        histogram = t.analyze(mix.InstructionMix())
    assert sum(histogram.values()) == counted
    assert histogram["syscall"] == len(qemu_strace(guest("history"), "3"))
    proc = subprocess.run([sys.executable, str(EXAMPLES / "insn_mix.py"), str(trace), "--top", "3"],
                          capture_output=True, text=True, env=GUEST_ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.search(rf"total\s+{counted:,}", proc.stdout)


def test_heap_write_example_finds_the_known_stores(guest, recorded):
    trace, stdout, _ = recorded("heap", "1000")
    program = guest("heap")
    block = int(re.search(r"heap=(\w+)", stdout)[1], 16)
    heap = load_example("heap_writes")
    with Trace.open(trace) as t:
        start, end = heap.heap_range(t)
        assert start <= block and block + 4000 <= end
        result = t.analyze(heap.HeapWrites(start, end))
    by_function = {}
    for pc, n in result["writes"].items():
        name = function_containing(program, pc)
        by_function[name] = by_function.get(name, 0) + n
    assert by_function["fill_heap"] == 1000
    assert result["distinct_addresses"] >= 1000  # 1000 stores to distinct words, and malloc's own
    proc = subprocess.run([sys.executable, str(EXAMPLES / "heap_writes.py"), str(trace)],
                          capture_output=True, text=True, env=GUEST_ENV, timeout=300)
    assert proc.returncode == 0 and "fill_heap" in proc.stdout, proc.stderr


def test_analyze_rejects_what_is_not_an_analysis(recorded):
    trace, _, _ = recorded("history", "3")
    with Trace.open(trace) as t, pytest.raises(CannoliError, match="Analysis"):
        t.analyze(object())
