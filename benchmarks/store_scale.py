"""The read side at real size: Debian's xz compressing generated text, at two
sizes, recorded, indexed and asked point questions -- all figures from this
one run, side by side (the machine is shared and noisy: compare ratios).

For each size it prints: recording wall time, `cannoli index` wall time and
their ratio (target <= 1), bytes of the chunks right after recording and of
the whole trace directory after indexing and their ratio (target <= 2), the
index's peak RSS (target <= 3 GB), a full-scan aggregate over mem (target:
within the recording's wall time), and the median latency of who-wrote,
memory_at, registers_at and the first step of a replay at random positions,
in-process on a warm connection (target <= 20 ms).  The first recording
has memory and no registers; registers_at needs a trace with registers: the
same workload is recorded again with the QEMU 10 that `cannoli setup-qemu`
built, registers on.

    python3 benchmarks/store_scale.py [--sizes 400000,4000000] [--samples 50] [--keep DIR] [--regs-up-to BYTES]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import CANNOLI, run_measured, scratch
from rich.console import Console
from rich.table import Table

from cannoli_db import Trace

XZ = "/usr/bin/xz"


def text(size: int) -> bytes:
    """English-like text: Zipf-distributed words from a fixed vocabulary (deterministic)."""
    rng = random.Random(1234)
    syllables = ["ka", "to", "ri", "men", "sa", "lo", "ver", "in", "de", "qua", "pro", "ti", "on", "al", "es",
                 "ur", "ba", "ne", "mi", "st"]
    vocab = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(5000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choices(vocab, weights, k=12)).capitalize() + ".\n"
        out.append(line)
        n += len(line)
    return "".join(out)[:size].encode()


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def chunk_bytes(trace: Path) -> int:
    return sum(p.stat().st_size for p in (trace / "chunks").glob("*.zst"))


def timed(func, inputs) -> float:
    ms = []
    for item in inputs:
        started = time.perf_counter()
        func(item)
        ms.append((time.perf_counter() - started) * 1000)
    return statistics.median(ms)


def record(source: Path, trace: Path, options=()) -> float:
    started = time.perf_counter()
    subprocess.run([*CANNOLI, "record", "--no-index", "--force", "-o", str(trace), *options, XZ, "-k", "-c",
                    str(source)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def point_questions(trace: Path, samples: int) -> dict:
    rng = random.Random(7)
    with Trace.open(trace) as t:
        end = t.end
        writes = t.sql(f"SELECT addr, idx FROM (SELECT addr, idx FROM mem WHERE is_write) USING SAMPLE {samples} ROWS").rows
        positions = [rng.randrange(end) for _ in range(samples)]
        started = time.perf_counter()
        (count, total) = t.sql("SELECT count(*), sum(size) FROM mem WHERE is_write").rows[0]
        scan = time.perf_counter() - started
        return {
            "mem rows": t.sql("SELECT sum(rows) FROM parts WHERE tbl = 'mem'").rows[0][0],
            "scan s": scan,
            "who_wrote ms": timed(lambda w: t.who_wrote(w[0], size=8, before=w[1] + 1), writes),
            "memory_at ms": timed(lambda w: t.memory_at(rng.randrange(end), w[0], 16), writes),
            "replay first step ms": timed(lambda p: next(iter(t.replay(p, min(p + 1000, end)))), positions),
        }


def registers_latency(trace: Path, samples: int) -> float:
    rng = random.Random(11)
    with Trace.open(trace) as t:
        return timed(lambda p: t.registers_at(p), [rng.randrange(t.end) for _ in range(samples)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="400000,4000000", help="input sizes in bytes, comma-separated")
    ap.add_argument("--samples", type=int, default=50, help="questions per kind")
    ap.add_argument("--keep", type=Path, help="keep the traces in this directory")
    ap.add_argument("--regs-up-to", type=int, default=1_000_000, metavar="BYTES",
                    help="record the registers trace only for sizes up to this (it takes about twice "
                         "the disk and time; default 1000000)")
    args = ap.parse_args()
    qemu10 = subprocess.run([*CANNOLI, "setup-qemu"], capture_output=True, text=True, check=True).stdout.strip()
    rows = []
    with scratch("cannoli-store-bench-") as work:
        where = args.keep or work
        where.mkdir(parents=True, exist_ok=True)
        for size in (int(s) for s in args.sizes.split(",")):
            source = where / f"text-{size}.txt"
            source.write_bytes(text(size))
            trace = where / f"xz-{size}.cannoli"
            record_s = record(source, trace, ("--no-regs",))
            chunks = chunk_bytes(trace)
            index_s, _, index_rss = run_measured([*CANNOLI, "index", str(trace)])
            facts = point_questions(trace, args.samples)
            record10_s = regs_ms = None
            if size <= args.regs_up_to:
                with_regs = where / f"xz-{size}-regs.cannoli"
                record10_s = record(source, with_regs, ("--qemu", qemu10))
                subprocess.run([*CANNOLI, "index", str(with_regs)], check=True, stderr=subprocess.DEVNULL)
                regs_ms = registers_latency(with_regs, args.samples)
            rows.append((size, record_s, index_s, chunks, dir_bytes(trace), index_rss, facts, record10_s, regs_ms))
            show(rows)  # each size's figures as soon as they are known


def show(rows) -> None:
    """One column per input size, one row per figure (the table stays narrow)."""
    table = Table(title="Debian's xz -k -c: recording, index, store, point questions (this run, 2 cores)")
    table.add_column("figure")
    table.add_column("target", justify="right")
    for size, *_ in rows:
        table.add_column(f"{size:,} B of text", justify="right")
    figures = [
        ("mem rows", "", lambda r: f"{r[6]['mem rows']:,}"),
        ("record s", "", lambda r: f"{r[1]:.1f}"),
        ("index s", "", lambda r: f"{r[2]:.1f}"),
        ("index / record", "<= 1", lambda r: f"{r[2] / r[1]:.2f}"),
        ("chunks after recording MiB", "", lambda r: f"{r[3] / 2**20:,.0f}"),
        ("trace dir after index MiB", "", lambda r: f"{r[4] / 2**20:,.0f}"),
        ("dir / chunks", "<= 2", lambda r: f"{r[4] / r[3]:.2f}"),
        ("index peak RSS GiB", "<= 3", lambda r: f"{r[5] / 2**30:.2f}"),
        ("scan of mem s", "<= record s", lambda r: f"{r[6]['scan s']:.2f}"),
        ("who-wrote ms (median)", "<= 20", lambda r: f"{r[6]['who_wrote ms']:.1f}"),
        ("memory_at ms (median)", "<= 20", lambda r: f"{r[6]['memory_at ms']:.1f}"),
        ("replay first step ms (median)", "<= 20", lambda r: f"{r[6]['replay first step ms']:.1f}"),
        ("record s, QEMU 10 with registers", "", lambda r: "-" if r[7] is None else f"{r[7]:.1f}"),
        ("registers_at ms (median, QEMU 10)", "<= 20", lambda r: "-" if r[8] is None else f"{r[8]:.1f}"),
    ]
    for name, target, cell in figures:
        table.add_row(name, target, *(cell(r) for r in rows))
    Console(width=120).print(table)


if __name__ == "__main__":
    sys.exit(main())
