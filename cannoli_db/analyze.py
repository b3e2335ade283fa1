"""Cannoli-style analyses over a whole trace, in parallel worker processes.

Cannoli streams events into user callbacks while the program runs and keeps
nothing; here the trace is kept, so an analysis can run afterwards, as often as
wanted, on all cores:

    class Writes(Analysis):
        tables = {"mem": ["addr", "is_write"]}        # what per_span needs
        def per_span(self, span):                    # worker process, any order
            return int(span.mem["is_write"].sum())
        def ordered(self, result):                     # this process, trace order
            self.total = getattr(self, "total", 0) + result
        def finish(self):
            return self.total

    Trace.open("app.cannoli").analyze(Writes())

A span is a range of positions [first_idx, end_idx): its exec rows (blocks
that start inside it), mem rows and syscalls, as numpy arrays sorted by idx,
read from the store by each worker over its own read-only connection.  (The
`per_chunk` of earlier releases still works, with a DeprecationWarning.)

Workers are spawned processes: the analysis object is pickled to them, so its
class must be importable (define it at module level; in a script, run the
analysis under `if __name__ == "__main__":`).
"""

from __future__ import annotations

import multiprocessing
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from . import arch as guest_arch
from .disasm import BLOCK_CODE_SQL, Disassembler
from .errors import CannoliError
from .query.database import connect

COLUMNS = {
    "exec": ["idx", "tid", "block_id", "pc", "icount"],
    "mem": ["idx", "tid", "pc", "addr", "size", "is_write", "value"],
    "syscalls": ["idx", "tid", "nr", "name", "arg0", "arg1", "arg2", "arg3", "arg4", "arg5", "ret"],
}
EVENTS_PER_SPAN = 4_000_000


class Analysis:
    """Base class: override per_span and ordered (and finish for a return value)."""

    # table -> columns that per_span reads; fewer columns, less to move
    tables: dict[str, list[str]] = {"exec": COLUMNS["exec"], "mem": COLUMNS["mem"]}

    def per_span(self, span: Span) -> Any:
        if type(self).per_chunk is not Analysis.per_chunk:  # the name before 0.2
            warnings.warn("Analysis.per_chunk is now per_span", DeprecationWarning, stacklevel=2)
            return self.per_chunk(span)
        raise NotImplementedError

    def per_chunk(self, span: Span) -> Any:
        """The old name of per_span, kept working for one release."""
        raise NotImplementedError

    def ordered(self, result: Any) -> None:
        raise NotImplementedError

    def finish(self) -> Any:
        return None


@dataclass
class Span:
    number: int
    first_idx: int
    end_idx: int
    exec: dict[str, np.ndarray]
    mem: dict[str, np.ndarray]
    syscalls: dict[str, np.ndarray]
    _con: Any = None
    _arch: str | None = None  # the trace's architecture (cannoli_db.arch name)

    @property
    def events(self) -> int:
        return sum(len(next(iter(t.values()), ())) for t in (self.exec, self.mem, self.syscalls))

    def block_insns(self, block_ids: np.ndarray) -> dict[int, list[str]]:
        """Disassembled instructions of the given blocks (as recorded), by block id."""
        global _DISASM
        if _DISASM is None:
            _DISASM = Disassembler(self._arch)
        ids = sorted({int(b) for b in block_ids})
        rows = self._con.execute(BLOCK_CODE_SQL, {"ids": ids}).fetchall()
        return {bid: _DISASM.block(bid, pc, code, sizes) for bid, pc, code, sizes in rows}


# per worker process
_CON: duckdb.DuckDBPyConnection | None = None
_ARCH: str | None = None
_DISASM: Disassembler | None = None


def _worker_init(trace: str, arch: str, module_dir: str | None) -> None:
    global _CON, _ARCH
    if module_dir and module_dir not in sys.path:
        sys.path.insert(0, module_dir)  # so the analysis class unpickles here too
    _CON = connect(Path(trace), threads=1)
    _ARCH = arch


def _run_span(analysis: Analysis, number: int, lo: int, hi: int) -> tuple[Any, int]:
    data = {}
    for table in ("exec", "mem", "syscalls"):
        wanted = [c for c in analysis.tables.get(table, []) if c in COLUMNS[table]]
        data[table] = _fetch(table, wanted, lo, hi) if wanted else {}
    span = Span(number, lo, hi, data["exec"], data["mem"], data["syscalls"], _CON, _ARCH)
    return analysis.per_span(span), span.events


def _fetch(table: str, columns: list[str], lo: int, hi: int) -> dict[str, np.ndarray]:
    cols = ", ".join(columns if "idx" in columns else ["idx", *columns])
    result = _CON.execute(f"SELECT {cols} FROM {table} WHERE idx >= $lo AND idx < $hi",
                          {"lo": lo, "hi": hi}).fetchnumpy()
    arrays = {k: np.asarray(v) for k, v in result.items()}
    idx = arrays["idx"]
    if len(idx) > 1 and np.any(idx[1:] < idx[:-1]):
        order = np.argsort(idx, kind="stable")
        arrays = {k: v[order] for k, v in arrays.items()}
    return arrays


def span_bounds(total: int, events: int) -> list[tuple[int, int]]:
    per_position = max(events, 1) / max(total, 1)
    size = max(1 << 16, int(EVENTS_PER_SPAN / max(per_position, 1e-9)))
    return [(lo, min(total, lo + size)) for lo in range(0, total, size)]


def run(trace, analysis: Analysis, workers: int = 0) -> Any:
    if not isinstance(analysis, Analysis):
        raise CannoliError("analyze() takes an instance of a cannoli_db.Analysis subclass")
    total = trace.end
    counts = trace.meta.get("counts", {})
    events = int(counts.get("blocks_executed", 0)) + int(counts.get("mem_events", 0))
    workers = workers or multiprocessing.cpu_count()
    db = str(trace.path)
    arch = guest_arch.of_meta(trace.meta, trace.path).name
    bounds = span_bounds(total, events)
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                 initargs=(db, arch, _module_dir(analysis))) as pool:
            # submit a bounded window ahead so results wait in memory only briefly
            window = workers * 2
            futures = []
            for number, (lo, hi) in enumerate(bounds):
                futures.append(pool.submit(_run_span, analysis, number, lo, hi))
                if len(futures) > window:
                    analysis.ordered(futures.pop(0).result()[0])
            for future in futures:
                analysis.ordered(future.result()[0])
    except BrokenProcessPool:
        raise CannoliError(f"an analysis worker process died; is {type(analysis).__qualname__} defined at "
                           f"module level in an importable file (see its traceback above)?") from None
    return analysis.finish()


def _module_dir(analysis: Analysis) -> str | None:
    module = sys.modules.get(type(analysis).__module__)
    path = getattr(module, "__file__", None)
    return str(Path(path).resolve().parent) if path and type(analysis).__module__ != "__main__" else None
