"""Chunk -> store parts: a chunk's packets become the rows of its exec, mem,
regs and regs_keys parts, with their global positions, and the rows of the two
index tables (mem_lines, exec_blocks).  Vectorised per packet; nothing here
loops over events in Python.

Everything a packet says is checked before it is used: a record that links
outside its packet or names an instruction outside its block is a ChunkError.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import format as F
from .. import tracedir
from ..decode import Chunk, ChunkError, PacketView, decode_packet
from ..positions import BlockTable, PositionPlan
from . import DICTIONARY, ENCODINGS, INDEXES, LZ4, PART_META_KEY, ROW_GROUP, SCHEMAS, STORE_VERSION, part_path


@dataclass
class Context:
    """What converting any chunk needs from the whole trace (after pass A)."""

    plan: PositionPlan
    blocks: BlockTable
    insn_start: np.ndarray  # per block id: where its instructions start in insn_pc
    insn_pc: np.ndarray
    reg_names: pa.Array     # register name by number (CN_EV_REG_NAME)

    @classmethod
    def of(cls, plan: PositionPlan, reg_names: list[str]) -> Context:
        start, pcs = plan.blocks.insn_pc_table()
        return cls(plan, plan.blocks, start, pcs, pa.array(reg_names, pa.string()))


_scratch = threading.local()


def _first_last(ids: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values of ids (< limit) in first-occurrence order, with the index
    of their first and last occurrence: O(len(ids)) with per-thread scratch."""
    first = getattr(_scratch, "first", None)
    if first is None or len(first) < limit:
        first = _scratch.first = np.zeros(max(limit, 1 << 16), np.int64)
        _scratch.last = np.zeros_like(first)
    last = _scratch.last
    order = np.arange(len(ids))
    last[ids] = order
    first[ids[::-1]] = order[::-1]
    distinct = ids[first[ids] == order]
    return distinct, first[distinct], last[distinct]


class _Tables:
    """Columns collected packet by packet, turned into Arrow tables at the end."""

    def __init__(self):
        self.cols = {name: {f.name: [] for f in schema} for name, schema in SCHEMAS.items()}
        self.rows = {name: 0 for name in SCHEMAS}

    def add(self, name: str, **columns) -> None:
        cols = self.cols[name]
        n = None
        for key, value in columns.items():
            cols[key].append(value)
            n = len(value) if not isinstance(value, pa.Array) else len(value)
        self.rows[name] += n or 0

    def tables(self) -> dict[str, pa.Table]:
        out = {}
        for name, schema in SCHEMAS.items():
            arrays = []
            for f in schema:
                parts = self.cols[name][f.name]
                arrays.append(pa.chunked_array([pa.array(p, f.type) if not isinstance(p, pa.Array) else p.cast(f.type)
                                                for p in parts], f.type) if parts else pa.chunked_array([], f.type))
            out[name] = pa.Table.from_arrays(arrays, schema=schema)
        return out


def convert_chunk(chunk: Chunk, ctx: Context) -> dict[str, pa.Table]:
    """The part tables of one chunk (its heavy frame must have been read)."""
    if chunk.heavy is None and chunk.version >= 3:
        raise ChunkError(chunk.name, "its heavy frame is not available to convert")
    out = _Tables()
    for view in chunk.views():
        _packet_rows(view, chunk.seq, ctx, out, chunk.name)
    return out.tables()


def _packet_rows(view: PacketView, part: int, ctx: Context, out: _Tables, name: str) -> None:
    h = view.header
    p = decode_packet(view, name)
    stream, tid = view.stream, int(h["tid"])
    ids = p.exec.astype(np.int64)
    idx, icount = ctx.plan.exec_positions(stream, p.exec_first, p.seg_insns, ids)
    own = 1 if p.flags & F.PACKET_CONTINUES and len(ids) else 0
    exec_row0 = out.rows["exec"]
    out.add("exec", idx=idx[own:], tid=np.full(len(ids) - own, tid, np.uint32), block_id=p.exec[own:],
            pc=ctx.blocks.pcs(ids[own:]), icount=icount[own:].astype(np.uint16))
    if len(ids) > own:
        blocks, first, last = _first_last(ids[own:], len(ctx.blocks.icount))
        out.add("exec_blocks", block_id=blocks.astype(np.uint32), part=np.full(len(blocks), part, np.uint32),
                row_first=(exec_row0 + first).astype(np.uint32), row_last=(exec_row0 + last).astype(np.uint32),
                idx_first=idx[own:][first], idx_last=idx[own:][last])
    mem_row0 = out.rows["mem"]
    acc_idx = _mem_rows(p, ids, idx, ctx, tid, out, name)
    _line_rows(view.section(F.SEC_LINE), acc_idx, part, mem_row0, out, name)
    _reg_rows(p, ids, idx, ctx, tid, out, name)


def _linked(link: np.ndarray, n_exec: int, name: str, what: str) -> np.ndarray:
    """Exec index (0-based) of each record's link (k >= 1 -> exec[k-1])."""
    if len(link) and (link.min() < 1 or link.max() > n_exec):
        raise ChunkError(name, f"{what} linked to an exec outside its packet")
    return link.astype(np.int64) - 1


def _mem_rows(p, ids: np.ndarray, idx: np.ndarray, ctx: Context, tid: int, out: _Tables, name: str) -> np.ndarray:
    info = p.mem_info
    if not len(info):
        return np.zeros(0, np.uint64)
    at = _linked(info >> F.MEMINFO_LINK_SHIFT, len(ids), name, "memory access")
    block = ids[at]
    insn = ((info >> F.MEMINFO_INSN_SHIFT) & F.MEMINFO_INSN_MASK).astype(np.int64)
    if np.any(insn >= ctx.blocks.lookup(block)):
        raise ChunkError(name, "memory access names an instruction outside its block")
    acc_idx = idx[at] + insn.astype(np.uint64)
    out.add("mem", idx=acc_idx, tid=np.full(len(info), tid, np.uint32),
            pc=ctx.insn_pc[ctx.insn_start[block] + insn], addr=p.mem_addr,
            size=(1 << (info & F.MEMINFO_SHIFT_MASK)).astype(np.uint8), is_write=(info & F.MEMINFO_STORE) != 0,
            value=p.mem_value)
    return acc_idx


def _line_rows(lines: np.ndarray, acc_idx: np.ndarray, part: int, row0: int, out: _Tables, name: str) -> None:
    if not len(lines):
        return
    first, last = lines["first"].astype(np.int64), lines["last"].astype(np.int64)
    if last.max() >= len(acc_idx) or np.any(first > last):
        raise ChunkError(name, "line index names an access outside its packet")
    out.add("mem_lines", line=lines["line"], part=np.full(len(lines), part, np.uint32),
            row_first=(row0 + first).astype(np.uint32), row_last=(row0 + last).astype(np.uint32),
            idx_first=acc_idx[first], idx_last=acc_idx[last], read_bytes=lines["read_bytes"],
            written_bytes=lines["written_bytes"])


def _reg_rows(p, ids: np.ndarray, idx: np.ndarray, ctx: Context, tid: int, out: _Tables, name: str) -> None:
    info = p.reg_info
    if not len(info):
        return
    at = _linked((info >> F.REGINFO_LINK_SHIFT) & F.REGINFO_LINK_MASK, len(ids), name, "register value")
    number = (info & F.REGINFO_NUMBER_MASK).astype(np.int32)
    for table, flag in (("regs", F.REGINFO_CHANGED), ("regs_keys", F.REGINFO_KEYFRAME)):
        keep = (info & flag) != 0
        cols = dict(idx=idx[at[keep]], tid=np.full(int(keep.sum()), tid, np.uint32),
                    n=number[keep].astype(np.uint8), value=p.reg_value[keep])
        if table == "regs":
            cols["reg"] = pa.DictionaryArray.from_arrays(pa.array(number[keep]), ctx.reg_names).cast(pa.string())
        out.add(table, **cols)


# ---- writing -------------------------------------------------------------------

def part_stamp(chunk: Chunk) -> dict:
    """What a part is made from: the store version and the chunk's checksums
    (a chunk whose heavy frame went to the store keeps that frame's checksum)."""
    h = chunk.header
    crc = [int(h["side_crc32"]), int(h["heavy_crc32"])] if chunk.version >= 3 else [int(h["payload_crc32"])]
    return {"store_version": STORE_VERSION, "chunk": chunk.seq, "crc": crc}


def write_parts(trace, seq: int, tables: dict[str, pa.Table], stamp: dict) -> int:
    """Write a chunk's parts (each atomically); returns the bytes written."""
    written = 0
    for name, table in tables.items():
        path = part_path(trace, name, seq)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _parquet_bytes(name, table.replace_schema_metadata({PART_META_KEY: json.dumps(stamp).encode()}))
        tracedir.write_atomically(path, (data,))
        written += len(data)
    return written


def _parquet_bytes(name: str, table: pa.Table) -> bytes:
    names = table.schema.names
    dictionary = [c for c in names if (name, c) in DICTIONARY]
    sink = io.BytesIO()
    pq.write_table(
        table, sink, row_group_size=ROW_GROUP, compression={c: "lz4" if c in LZ4 else "zstd" for c in names},
        compression_level={c: 1 for c in names if c not in LZ4},
        use_dictionary=dictionary, column_encoding={c: ENCODINGS[c] for c in names if c not in dictionary},
        write_statistics=[c for c in names if c.startswith("idx") or name in INDEXES],
    )
    return sink.getvalue()


def read_stamp(path) -> dict | None:
    """The stamp a part was written with, or None if it is not a whole part."""
    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[PART_META_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None
