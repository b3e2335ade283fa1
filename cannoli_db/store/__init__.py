"""The Parquet store: the bulk rows of a trace (exec, mem, regs), one part per
chunk, in files that DuckDB, Spark and Trino read directly.

    TRACE/chunks/exec/NNNNNN.parquet       one row per executed block
    TRACE/chunks/mem/NNNNNN.parquet        one row per memory access
    TRACE/chunks/regs/NNNNNN.parquet       register changes at block entry
    TRACE/chunks/regs_keys/NNNNNN.parquet  full register states (keyframes)
    TRACE/chunks/mem_lines/NNNNNN.parquet  address index: which rows touch a 64-byte line
    TRACE/chunks/exec_blocks/NNNNNN.parquet  block index: which rows run a block

Part NNNNNN holds the rows of chunk NNNNNN's packets, in packet order and, for
one packet, in position order; every row carries its global position `idx`.
Row groups hold ROW_GROUP rows, with min/max statistics of `idx`, so a
position range reads a few row groups.  The two index tables say, per packet,
which rows of the mem part touch each page (and which 64-byte lines of it) and
which rows of the exec part run each block: who-wrote, memory_at and
breakpoints read those rows only.  docs/format.md describes the files;
docs/schema.md the columns.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from .. import tracedir
from ..hex_columns import ARROW as HEX  # an address or raw value: tables show it in hex

STORE_VERSION = 1          # bump when a part's columns or meaning change
ROW_GROUP = 1 << 15        # rows per Parquet row group: a point question decodes one
PART_META_KEY = b"cannoli_db.part"  # Parquet key-value metadata: what the part was made from


def _fields(*specs) -> pa.Schema:
    """(name, type, nullable[, metadata]) per column."""
    return pa.schema([pa.field(name, typ, nullable=nullable, metadata=meta[0] if meta else None)
                      for name, typ, nullable, *meta in specs])


SCHEMAS: dict[str, pa.Schema] = {
    "exec": _fields(("idx", pa.uint64(), False), ("tid", pa.uint32(), False), ("block_id", pa.uint32(), False),
                    ("pc", pa.uint64(), False, HEX), ("icount", pa.uint16(), False)),
    "mem": _fields(("idx", pa.uint64(), False), ("tid", pa.uint32(), False), ("pc", pa.uint64(), False, HEX),
                   ("addr", pa.uint64(), False, HEX), ("size", pa.uint8(), False), ("is_write", pa.bool_(), False),
                   ("value", pa.uint64(), True, HEX)),
    "regs": _fields(("idx", pa.uint64(), False), ("tid", pa.uint32(), False), ("n", pa.uint8(), False),
                    ("reg", pa.string(), False), ("value", pa.uint64(), False, HEX)),
    "regs_keys": _fields(("idx", pa.uint64(), False), ("tid", pa.uint32(), False), ("n", pa.uint8(), False),
                         ("value", pa.uint64(), False, HEX)),
    "mem_lines": _fields(("line", pa.uint64(), False), ("part", pa.uint32(), False),
                         ("row_first", pa.uint32(), False), ("row_last", pa.uint32(), False),
                         ("idx_first", pa.uint64(), False), ("idx_last", pa.uint64(), False),
                         ("read_bytes", pa.uint64(), False), ("written_bytes", pa.uint64(), False)),
    "exec_blocks": _fields(("block_id", pa.uint32(), False), ("part", pa.uint32(), False),
                           ("row_first", pa.uint32(), False), ("row_last", pa.uint32(), False),
                           ("idx_first", pa.uint64(), False), ("idx_last", pa.uint64(), False)),
}
BULK = ("exec", "mem", "regs", "regs_keys")
INDEXES = ("mem_lines", "exec_blocks")

# Per-column Parquet encodings and codecs, chosen by measuring xz's trace
# (docs/format.md §11): the cheapest to write that keeps the trace directory
# well under twice the chunks.  Positions as deltas; addresses and values as
# byte planes under zstd (their high bytes repeat); thread ids plain under zstd
# (one value per packet); pcs, sizes and flags under lz4, which writes them at
# half zstd's cost for a few tenths of a byte more; an exec's block and pc
# from a dictionary (a part runs a few thousand blocks).  Keyed by column.
ENCODINGS = {
    "idx": "DELTA_BINARY_PACKED", "tid": "PLAIN", "pc": "PLAIN",
    "icount": "BYTE_STREAM_SPLIT", "addr": "BYTE_STREAM_SPLIT", "size": "BYTE_STREAM_SPLIT", "is_write": "PLAIN",
    "value": "BYTE_STREAM_SPLIT", "n": "BYTE_STREAM_SPLIT", "block_id": "DELTA_BINARY_PACKED",
    "part": "DELTA_BINARY_PACKED", "row_first": "DELTA_BINARY_PACKED",
    "row_last": "DELTA_BINARY_PACKED", "idx_first": "DELTA_BINARY_PACKED", "idx_last": "DELTA_BINARY_PACKED",
    "line": "DELTA_BINARY_PACKED", "read_bytes": "PLAIN", "written_bytes": "PLAIN",
}
LZ4 = {"pc", "icount", "size", "is_write", "n"}  # the others: zstd level 1
DICTIONARY = {("regs", "reg"), ("exec", "block_id"), ("exec", "pc")}


def store_dir(trace: Path, table: str) -> Path:
    return Path(trace) / tracedir.CHUNKS_NAME / table


def part_path(trace: Path, table: str, seq: int) -> Path:
    return store_dir(trace, table) / f"{seq:06d}.parquet"


def part_files(trace: Path, table: str) -> list[Path]:
    """The parts of a table, in chunk order (temporary files are not parts)."""
    folder = store_dir(trace, table)
    return sorted(p for p in folder.glob("*.parquet") if p.stem.isdigit()) if folder.is_dir() else []


def glob(trace: Path, table: str) -> str:
    """The read_parquet pattern of a table's parts."""
    return str(store_dir(trace, table) / "[0-9]*.parquet")
