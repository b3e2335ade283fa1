"""The Parquet store and its address index: mem_lines (made by the recorder's C
consumer from the ring) against the mem rows themselves, recomputed here with
numpy, and accesses that cross a line found through both lines; checked against
the values the guest stored."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from cannoli_db import Trace, store

from .conftest import symbol

V8, V4 = 0x8877665544332211, 0xDDCCBBAA


@pytest.fixture(scope="module")
def crossing(recorded, guest):
    trace, out, _ = recorded("line_cross")
    assert out == f"{V8:016x} {V4 >> 16 & 0xFF:02x}\n"
    lines, _ = symbol(guest("line_cross"), "lines")
    return trace, lines


def test_a_store_across_a_line_is_found_through_either_line(crossing):
    trace, lines = crossing
    with Trace.open(trace) as t:
        crossed = t.sql("SELECT count(*) FROM mem WHERE is_write AND addr % 64 + size > 64 "
                        "AND addr BETWEEN $a AND $a + 255", {"a": lines}).rows[0][0]
        assert crossed >= 2  # the guest's two stores really crossed (else this test proves nothing)
        assert t.memory_at(t.end, lines + 60, 8).values == tuple(V8.to_bytes(8, "little"))
        assert t.memory_at(t.end, lines + 126, 4).values == tuple(V4.to_bytes(4, "little"))
        # bytes 64..67 and 128..129 lie only in the second line of each store
        for addr, want in ((lines + 64, V8 >> 32), (lines + 128, V4 >> 16)):
            (w,) = t.who_wrote(addr, size=2)
            assert (w.value >> 8 * (addr - w.addr)) & 0xFFFF == want & 0xFFFF


def _masks(addr: np.ndarray, size: np.ndarray) -> dict[int, int]:
    """line -> OR of the byte masks of accesses (an access may cover two lines)."""
    out: dict[int, int] = {}
    for a, s in zip(addr.tolist(), size.tolist()):
        for b in range(a, a + s):
            out[b >> 6] = out.get(b >> 6, 0) | 1 << (b & 63)
    return out


def _col(table, name: str) -> np.ndarray:
    return table.column(name).to_numpy().astype(np.int64 if name != "is_write" else bool)


def test_mem_lines_say_exactly_which_bytes_each_part_touched(crossing):
    trace, _ = crossing
    for path in store.part_files(trace, "mem"):
        mem = pq.read_table(path)
        lines = pq.read_table(store.part_path(trace, "mem_lines", int(path.stem)))
        addr, size, write = _col(mem, "addr"), _col(mem, "size"), _col(mem, "is_write")
        line, row_first, row_last = _col(lines, "line"), _col(lines, "row_first"), _col(lines, "row_last")
        for is_write, column in ((True, "written_bytes"), (False, "read_bytes")):
            want = _masks(addr[write == is_write], size[write == is_write])
            got: dict[int, int] = {}
            for ln, mask in zip(line.tolist(), lines.column(column).to_pylist()):
                if mask:
                    got[ln] = got.get(ln, 0) | mask
            assert got == want, f"part {path.stem}, {column}"
        # each access lies inside the rows that an entry of its line names
        for row, ln in enumerate((addr >> 6).tolist()):
            assert np.any((line == ln) & (row_first <= row) & (row <= row_last)), (path.stem, row)
