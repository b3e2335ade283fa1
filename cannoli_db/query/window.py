"""The memory accesses near an address range, found through the store's address
index (mem_pages) instead of a scan of every access: the access path of
who-wrote, memory_at and the memory history queries.

An access covers [addr, addr + size) with size <= 8, so the accesses that can
touch bytes [lo, hi] start in [lo - 7, hi]; mem_pages says, per packet, which
64-byte lines of each page its accesses started in.  The candidate packets are
read newest first (latest) or oldest first (earliest) until no packet left can
change the answer.  The result is the same rows a scan of `mem` filtered on
the range would give the named query's SQL, which then computes the answer.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .. import format as F

MAX_ACCESS = 8  # bytes: the widest access (16-byte ones are stored as two halves)
COLUMNS = ["idx", "tid", "pc", "addr", "size", "is_write", "value"]
BATCH = 8       # candidate packets read at a time
NEVER = (1 << 64) - 1


def _pages(lo: int, hi: int) -> list[tuple[int, int]]:
    """(page, mask of 64-byte lines) where an access touching [lo, hi] can start."""
    start = max(lo - (MAX_ACCESS - 1), 0)
    out = []
    for page in range(start >> F.PAGE_SHIFT, (hi >> F.PAGE_SHIFT) + 1):
        first = max(start, page << F.PAGE_SHIFT)
        last = min(hi, ((page + 1) << F.PAGE_SHIFT) - 1)
        a, b = (first >> F.LINE_SHIFT) & 63, (last >> F.LINE_SHIFT) & 63
        mask = ((1 << (b + 1)) - 1) ^ ((1 << a) - 1)
        out.append((page, mask))
    return out


def _candidates(con, lo: int, hi: int, lines: str, where: str, order: str, params: dict) -> list[tuple]:
    values = ", ".join(f"({page}::UBIGINT, {mask}::UBIGINT)" for page, mask in _pages(lo, hi))
    return con.execute(f"""
        SELECT p.part, p.row_first, p.row_last, p.idx_first, p.idx_last
        FROM mem_pages p JOIN (VALUES {values}) w(page, mask) USING (page)
        WHERE ({lines}) & w.mask <> 0 AND {where}
        ORDER BY {order}""", params).fetchall()


def _read(parts, batch, lo: int, hi: int, keep) -> pa.Table | None:
    tables = []
    for part, first, last, _, _ in batch:
        t = parts.rows("mem", part, first, last, COLUMNS)
        addr = t.column("addr").to_numpy()
        size = t.column("size").to_numpy().astype(np.uint64)
        near = (addr <= hi) & (addr + size > lo) & keep(t)
        if near.any():
            tables.append(t.filter(pa.array(near)))
    return pa.concat_tables(tables) if tables else None


def _newest_per_byte(rows: list[pa.Table], lo: int, hi: int) -> np.ndarray:
    """For each byte of [lo, hi], the largest idx of a collected access covering it (-1: none)."""
    newest = np.full(hi - lo + 1, -1, np.int64)
    for t in rows:
        addr = t.column("addr").to_numpy().astype(np.int64)
        size = t.column("size").to_numpy().astype(np.int64)
        idx = t.column("idx").to_numpy().astype(np.int64)
        for k in range(MAX_ACCESS):
            inside = (k < size) & (addr + k >= lo) & (addr + k <= hi)
            np.maximum.at(newest, addr[inside] + k - lo, idx[inside])
    return newest


def _empty() -> pa.Table:
    from ..store import SCHEMAS

    return SCHEMAS["mem"].empty_table()


def latest(con, parts, lo: int, hi: int, at: int | None, writes_only: bool) -> pa.Table:
    """The accesses touching [lo, hi] among which, for every byte, is the latest
    one before position `at` (writes_only: the latest write; otherwise the latest
    access, where reads at `at` itself count too)."""
    bound = NEVER if at is None else at
    lines = "p.written_lines" if writes_only else "p.written_lines | p.read_lines"
    where = "p.idx_first < $at" if writes_only or at is None else "p.idx_first <= $at"
    cands = _candidates(con, lo, hi, lines, where, "p.idx_last DESC", {"at": bound})

    def keep(t):
        idx = t.column("idx").to_numpy()
        write = t.column("is_write").to_numpy(zero_copy_only=False)
        if writes_only:
            return write & (idx < bound)
        return (idx < bound) | ((idx == bound) & ~write)

    rows: list[pa.Table] = []
    for k in range(0, len(cands), BATCH):
        got = _read(parts, cands[k: k + BATCH], lo, hi, keep)
        if got is not None:
            rows.append(got)
        if k + BATCH < len(cands):
            # done once no older packet can hold a newer access to any byte
            older = cands[k + BATCH][4]
            if rows and _newest_per_byte(rows, lo, hi).min() >= older:
                break
    return pa.concat_tables(rows) if rows else _empty()


def earliest(con, parts, lo: int, hi: int, start: int, end: int | None, reads_only: bool, limit: int) -> pa.Table:
    """The accesses touching [lo, hi] at positions [start, end), at least the
    `limit` first of them in position order (reads_only: reads only)."""
    stop = NEVER if end is None else end
    lines = "p.read_lines" if reads_only else "p.written_lines | p.read_lines"
    cands = _candidates(con, lo, hi, lines, "p.idx_last >= $start AND p.idx_first < $stop", "p.idx_first",
                        {"start": start, "stop": stop})

    def keep(t):
        idx = t.column("idx").to_numpy()
        ok = (idx >= start) & (idx < stop)
        return ok & ~t.column("is_write").to_numpy(zero_copy_only=False) if reads_only else ok

    rows: list[pa.Table] = []
    found = 0
    for k in range(0, len(cands), BATCH):
        got = _read(parts, cands[k: k + BATCH], lo, hi, keep)
        if got is not None:
            rows.append(got)
            found += got.num_rows
        if found >= limit and k + BATCH < len(cands):
            # done once the limit-th access comes before any later packet
            idx = np.sort(np.concatenate([t.column("idx").to_numpy() for t in rows]))
            if idx[limit - 1] < cands[k + BATCH][3]:
                break
    return pa.concat_tables(rows) if rows else _empty()


def _kind_lines(kind: str) -> str:
    return {"write": "p.written_lines", "read": "p.read_lines", "any": "p.written_lines | p.read_lines"}[kind]


def _kind_keep(kind: str, t: pa.Table) -> np.ndarray:
    write = t.column("is_write").to_numpy(zero_copy_only=False)
    return {"write": write, "read": ~write, "any": np.ones(len(write), bool)}[kind]


def first_after(con, parts, lo: int, hi: int, at: int, kind: str, tids=None) -> dict | None:
    """The first access of `kind` (write, read, any) touching [lo, hi] at a position >= at
    (of one of `tids`, if given): a row of `mem` as a dict, or None.  Accesses of one
    instruction come in address order."""
    cands = _candidates(con, lo, hi, _kind_lines(kind), "p.idx_last >= $at", "p.idx_first", {"at": at})
    best = None
    for k in range(0, len(cands), BATCH):
        got = _read(parts, cands[k: k + BATCH], lo, hi, lambda t: _kind_keep(kind, t) & _tid_ok(t, tids)
                    & (t.column("idx").to_numpy() >= at))
        if got is not None:
            row = min(got.to_pylist(), key=lambda r: (r["idx"], r["addr"]))
            best = row if best is None or (row["idx"], row["addr"]) < (best["idx"], best["addr"]) else best
        if best is not None and (k + BATCH >= len(cands) or best["idx"] < cands[k + BATCH][3]):
            return best
    return best


def last_before(con, parts, lo: int, hi: int, before: int, kind: str, tids=None) -> dict | None:
    """The last access of `kind` touching [lo, hi] at a position < before, or None."""
    cands = _candidates(con, lo, hi, _kind_lines(kind), "p.idx_first < $before", "p.idx_last DESC",
                        {"before": before})
    best = None
    for k in range(0, len(cands), BATCH):
        got = _read(parts, cands[k: k + BATCH], lo, hi, lambda t: _kind_keep(kind, t) & _tid_ok(t, tids)
                    & (t.column("idx").to_numpy() < before))
        if got is not None:
            row = max(got.to_pylist(), key=lambda r: (r["idx"], r["addr"]))
            best = row if best is None or (row["idx"], row["addr"]) > (best["idx"], best["addr"]) else best
        if best is not None and (k + BATCH >= len(cands) or best["idx"] > cands[k + BATCH][4]):
            return best
    return best


def _tid_ok(t: pa.Table, tids) -> np.ndarray:
    if tids is None:
        return np.ones(t.num_rows, bool)
    return np.isin(t.column("tid").to_numpy(), np.asarray(sorted(tids), np.uint32))
