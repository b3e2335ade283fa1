"""The memory accesses near an address range, found through the store's address
index (mem_lines) instead of a scan of every access: the access path of
who-wrote, memory_at, the memory history queries and the gdbserver's
watchpoints.

mem_lines says, per packet, which bytes of each 64-byte line its accesses read
and wrote, so the packets that can hold an access to a byte are exactly those
whose masks have its bit, and a byte no access covered costs nothing.  The
candidate packets are read newest first (latest) or oldest first (earliest),
a few at a time -- one, then two, four, up to BATCH -- and a packet is skipped
when every byte it covers is already answered by a newer access; the search
ends when no candidate left can change the answer.  The result is the same
rows a scan of `mem` filtered on the range would give the named query's SQL,
which then computes the answer.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .. import format as F

MAX_ACCESS = 8  # bytes: the widest access (16-byte ones are stored as two halves)
COLUMNS = ["idx", "tid", "pc", "addr", "size", "is_write", "value"]
BATCH = 8       # most candidate packets read at a time
WINDOW = 1024   # candidates whose relevance is judged at a time
NEVER = (1 << 64) - 1
LINE = 1 << F.LINE_SHIFT
_BIT = np.uint64(1) << np.arange(64, dtype=np.uint64)


def _ends(lo: int, hi: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(line, mask of its bytes in [lo, hi]) of the range's first and last line."""
    def mask(line: int) -> int:
        a = max(lo, line << F.LINE_SHIFT) & (LINE - 1)
        b = min(hi, ((line + 1) << F.LINE_SHIFT) - 1) & (LINE - 1)
        return ((1 << (b + 1)) - 1) ^ ((1 << a) - 1)

    first, last = lo >> F.LINE_SHIFT, hi >> F.LINE_SHIFT
    return (first, mask(first)), (last, mask(last))


class _Candidates:
    """The packets whose accesses cover bytes of [lo, hi], as arrays in search order."""

    def __init__(self, con, lo: int, hi: int, masks: str, where: str, order: str, params: dict):
        (l0, m0), (l1, m1) = _ends(lo, hi)
        # the range's bytes of each line: all 64 but in its first and last line
        mask = f"CASE p.line WHEN {l0} THEN {m0}::UBIGINT WHEN {l1} THEN {m1}::UBIGINT ELSE {NEVER}::UBIGINT END"
        got = con.execute(f"""
            SELECT p.part, p.row_first, p.row_last, p.idx_first, p.idx_last, p.line, ({masks}) & ({mask}) AS hit
            FROM mem_lines p
            WHERE p.line BETWEEN {l0}::UBIGINT AND {l1}::UBIGINT AND ({masks}) & ({mask}) <> 0 AND {where}
            ORDER BY {order}""", params).fetchnumpy()
        self.part, self.first, self.last = got["part"], got["row_first"], got["row_last"]
        self.idx_first, self.idx_last = got["idx_first"].astype(np.uint64), got["idx_last"].astype(np.uint64)
        self.line, self.hit = got["line"].astype(np.int64), got["hit"].astype(np.uint64)
        self.lo = lo
        self.n = len(self.part)

    def rows(self, ks) -> list[tuple[int, int, int]]:
        return [(int(self.part[k]), int(self.first[k]), int(self.last[k])) for k in ks]

    def covered(self, k0: int, k1: int) -> tuple[np.ndarray, np.ndarray]:
        """For candidates k0 .. k1 - 1: which of their 64 line bytes they cover (n, 64),
        and those bytes' offsets in the range (clipped where not covered)."""
        bits = (self.hit[k0:k1, None] & _BIT) != 0
        offsets = (self.line[k0:k1, None] << F.LINE_SHIFT) + np.arange(LINE) - self.lo
        return bits, offsets


def _read(parts, rows: list[tuple[int, int, int]], lo: int, hi: int, keep) -> pa.Table | None:
    tables = []
    for part, first, last in rows:
        t = parts.rows("mem", part, first, last, COLUMNS)
        addr = t.column("addr").to_numpy()
        size = t.column("size").to_numpy().astype(np.uint64)
        near = (addr <= hi) & (addr + size > lo) & keep(t)
        if near.any():
            tables.append(t.filter(pa.array(near)))
    return pa.concat_tables(tables) if tables else None


def _raise_newest(newest: np.ndarray, t: pa.Table, lo: int) -> None:
    """newest[b] = the largest idx of an access in t covering byte lo + b."""
    addr = t.column("addr").to_numpy().astype(np.int64)
    size = t.column("size").to_numpy().astype(np.int64)
    idx = t.column("idx").to_numpy().astype(np.int64)
    for k in range(MAX_ACCESS):
        at = addr + k - lo
        inside = (k < size) & (at >= 0) & (at < len(newest))
        np.maximum.at(newest, at[inside], idx[inside])


def _empty() -> pa.Table:
    from ..store import SCHEMAS

    return SCHEMAS["mem"].empty_table()


def latest(con, parts, lo: int, hi: int, at: int | None, writes_only: bool) -> pa.Table:
    """The accesses touching [lo, hi] among which, for every byte, is the latest
    one before position `at` (writes_only: the latest write; otherwise the latest
    access, where reads at `at` itself count too)."""
    bound = NEVER if at is None else at
    masks = "p.written_bytes" if writes_only else "p.written_bytes | p.read_bytes"
    where = "p.idx_first < $at" if writes_only or at is None else "p.idx_first <= $at"
    cands = _Candidates(con, lo, hi, masks, where, "p.idx_last DESC", {"at": bound})

    def keep(t):
        idx = t.column("idx").to_numpy()
        write = t.column("is_write").to_numpy(zero_copy_only=False)
        if writes_only:
            return write & (idx < bound)
        return (idx < bound) | ((idx == bound) & ~write)

    newest = np.full(hi - lo + 1, -1, np.int64)
    cap = np.minimum(cands.idx_last, np.uint64(min(bound, (1 << 63) - 1))).astype(np.int64)

    def relevant(k0: int, k1: int) -> np.ndarray:
        # a packet matters while some byte it covers has no access as new as the packet's last
        bits, offsets = cands.covered(k0, k1)
        seen = newest[np.clip(offsets, 0, len(newest) - 1)]
        return (bits & (seen < cap[k0:k1, None])).any(axis=1)

    return _search(cands, relevant, lambda rows: _read(parts, rows, lo, hi, keep),
                   lambda got: _raise_newest(newest, got, lo))


def _search(cands: _Candidates, relevant, read, update) -> pa.Table:
    """Read the relevant candidates in order, a growing number at a time."""
    rows: list[pa.Table] = []
    k, step = 0, 1
    while k < cands.n:
        k1 = min(cands.n, k + WINDOW)
        todo = np.flatnonzero(relevant(k, k1)) + k
        if not len(todo):
            k = k1
            continue
        take = todo[:step]
        got = read(cands.rows(take))
        if got is not None:
            rows.append(got)
            update(got)
        k = int(take[-1]) + 1
        step = min(2 * step, BATCH)
    return pa.concat_tables(rows) if rows else _empty()


def earliest(con, parts, lo: int, hi: int, start: int, end: int | None, reads_only: bool, limit: int) -> pa.Table:
    """The accesses touching [lo, hi] at positions [start, end), at least the
    `limit` first of them in position order (reads_only: reads only)."""
    stop = NEVER if end is None else end
    masks = "p.read_bytes" if reads_only else "p.written_bytes | p.read_bytes"
    cands = _Candidates(con, lo, hi, masks, "p.idx_last >= $start AND p.idx_first < $stop", "p.idx_first",
                        {"start": start, "stop": stop})

    def keep(t):
        idx = t.column("idx").to_numpy()
        ok = (idx >= start) & (idx < stop)
        return ok & ~t.column("is_write").to_numpy(zero_copy_only=False) if reads_only else ok

    found: list[np.ndarray] = []

    def relevant(k0: int, k1: int) -> np.ndarray:
        # enough found once the limit-th access comes before a packet's first
        if sum(map(len, found)) < limit:
            return np.ones(k1 - k0, bool)
        kth = np.partition(np.concatenate(found), limit - 1)[limit - 1]
        return cands.idx_first[k0:k1] <= np.uint64(kth)

    return _search(cands, relevant, lambda rows: _read(parts, rows, lo, hi, keep),
                   lambda got: found.append(got.column("idx").to_numpy()))


def _kind_masks(kind: str) -> str:
    return {"write": "p.written_bytes", "read": "p.read_bytes", "any": "p.written_bytes | p.read_bytes"}[kind]


def _kind_keep(kind: str, t: pa.Table) -> np.ndarray:
    write = t.column("is_write").to_numpy(zero_copy_only=False)
    return {"write": write, "read": ~write, "any": np.ones(len(write), bool)}[kind]


def first_after(con, parts, lo: int, hi: int, at: int, kind: str, tids=None) -> dict | None:
    """The first access of `kind` (write, read, any) touching [lo, hi] at a position >= at
    (of one of `tids`, if given): a row of `mem` as a dict, or None.  Accesses of one
    instruction come in address order."""
    cands = _Candidates(con, lo, hi, _kind_masks(kind), "p.idx_last >= $at", "p.idx_first", {"at": at})
    return _best(parts, cands, lo, hi, lambda t: _kind_keep(kind, t) & _tid_ok(t, tids)
                 & (t.column("idx").to_numpy() >= at), first=True)


def last_before(con, parts, lo: int, hi: int, before: int, kind: str, tids=None) -> dict | None:
    """The last access of `kind` touching [lo, hi] at a position < before, or None."""
    cands = _Candidates(con, lo, hi, _kind_masks(kind), "p.idx_first < $before", "p.idx_last DESC",
                        {"before": before})
    return _best(parts, cands, lo, hi, lambda t: _kind_keep(kind, t) & _tid_ok(t, tids)
                 & (t.column("idx").to_numpy() < before), first=False)


def _best(parts, cands: _Candidates, lo: int, hi: int, keep, first: bool) -> dict | None:
    """The earliest (first) or latest kept access among the candidates."""
    best: list[dict] = []

    def key(r):
        return (r["idx"], r["addr"])

    def relevant(k0: int, k1: int) -> np.ndarray:
        if not best:
            return np.ones(k1 - k0, bool)
        idx = np.uint64(best[0]["idx"])
        return cands.idx_first[k0:k1] <= idx if first else cands.idx_last[k0:k1] >= idx

    def update(got: pa.Table) -> None:
        rows = got.to_pylist() + best
        best[:] = [min(rows, key=key) if first else max(rows, key=key)]

    _search(cands, relevant, lambda rows: _read(parts, rows, lo, hi, keep), update)
    return best[0] if best else None


def _tid_ok(t: pa.Table, tids) -> np.ndarray:
    if tids is None:
        return np.ones(t.num_rows, bool)
    return np.isin(t.column("tid").to_numpy(), np.asarray(sorted(tids), np.uint32))
