"""Reading exactly the rows a question needs from the store's parts: by row
range (the store's index tables name them) or by position range (row-group
statistics).  pyarrow reads only the row groups that hold them; open files
and their footers are kept, so a session's second question costs a read, not
a file open, and the last few row groups read are kept decoded."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import store

OPEN_FILES = 256
CACHED_GROUPS = 16  # decoded row groups kept (a mem row group is ~5 MB)


class Parts:
    def __init__(self, trace: Path):
        self.trace = Path(trace)
        self._files: OrderedDict[tuple[str, int], tuple[pq.ParquetFile, np.ndarray]] = OrderedDict()
        self._groups: OrderedDict[tuple, pa.Table] = OrderedDict()

    def _file(self, table: str, part: int) -> tuple[pq.ParquetFile, np.ndarray]:
        key = (table, part)
        hit = self._files.get(key)
        if hit is None:
            f = pq.ParquetFile(store.part_path(self.trace, table, part))
            sizes = [f.metadata.row_group(g).num_rows for g in range(f.metadata.num_row_groups)]
            hit = (f, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
            self._files[key] = hit
            if len(self._files) > OPEN_FILES:
                self._files.popitem(last=False)
        else:
            self._files.move_to_end(key)
        return hit

    def rows(self, table: str, part: int, first: int, last: int, columns: list[str]) -> pa.Table:
        """Rows first .. last (inclusive) of a part."""
        _, starts = self._file(table, part)
        g0 = int(np.searchsorted(starts, first, side="right")) - 1
        g1 = int(np.searchsorted(starts, last, side="right")) - 1
        data = pa.concat_tables([self.group(table, part, g, columns) for g in range(g0, g1 + 1)])
        return data.slice(first - int(starts[g0]), last - first + 1)

    def group(self, table: str, part: int, group: int, columns: list[str]) -> pa.Table:
        # a question reads neighbouring packets, which often share row groups
        key = (table, part, group, tuple(columns))
        hit = self._groups.get(key)
        if hit is None:
            f, _ = self._file(table, part)
            hit = self._groups[key] = f.read_row_group(group, columns=columns)
            if len(self._groups) > CACHED_GROUPS:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(key)
        return hit

    def row_groups(self, table: str, part: int, groups: list[int], columns: list[str]) -> pa.Table:
        f, _ = self._file(table, part)
        return f.read_row_groups(groups, columns=columns)


def tuples(table: pa.Table) -> list[tuple]:
    """A table's rows as tuples, in its column order."""
    return list(zip(*(table[c].to_pylist() for c in table.column_names)))
