"""The small tables of trace.duckdb: blocks, block_insns, threads, syscalls,
syscall_strings, the store's parts and index tables, and meta.  (mmaps,
modules and symbols: address_space.py.)"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import format as F
from .. import schema, store, syscall_render, syscall_tables, tracedir
from ..positions import BlockTable, PositionPlan
from .events import EventLog, pair_syscalls


def load_blocks(con, blocks: BlockTable) -> None:
    parts = []
    for rows, _, insn_bytes in blocks.rows:
        n_bytes = rows["n_bytes"].astype(np.int64)
        if int(n_bytes.sum()) != len(insn_bytes):
            raise ValueError("block definitions disagree with their instruction bytes")
        offsets = np.concatenate([[0], np.cumsum(n_bytes)]).astype(np.int32)
        code = pa.BinaryArray.from_buffers(pa.binary(), len(rows),
                                           [None, pa.py_buffer(offsets), pa.py_buffer(insn_bytes.tobytes())])
        parts.append(pa.table({
            "block_id": rows["block_id"], "pc": rows["pc"], "size": rows["n_bytes"],
            "icount": rows["n_insns"], "bytes": code, "base_id": rows["base_id"],
            "is_twin": (rows["flags"] & F.BLOCK_TWIN) != 0,
        }))
    if parts:
        blocks_table = pa.concat_tables(parts)  # noqa: F841 (read by the SQL below)
        con.execute("INSERT INTO blocks SELECT * FROM blocks_table")
    ids, ns, pcs, sizes = blocks.flat_insns()
    insns_table = pa.table({"block_id": ids.astype(np.uint32), "n": ns, "pc": pcs, "size": sizes})  # noqa: F841
    con.execute("INSERT INTO block_insns SELECT * FROM insns_table")


def load_reg_names(con, names: list[str], recorded: int) -> None:
    rows = [(n, names[n]) for n in range(min(recorded, len(names)))]
    if rows:
        con.executemany("INSERT INTO reg_names VALUES (?, ?)", rows)


def load_threads(con, plan: PositionPlan) -> None:
    """One row per stream.  A thread that exec'd under a QEMU that follows exec
    goes on in a new stream of the same (pid, tid): its earlier rows ended at
    that exec (exited), and the later ones keep the process's parent."""
    rows = []
    logs = sorted(plan.streams.values(), key=lambda s: (s.pid, s.tid, s.stream))
    for k, log in enumerate(logs):
        first, last, insns = plan.stream_span(log)
        earlier = k > 0 and (logs[k - 1].pid, logs[k - 1].tid) == (log.pid, log.tid)
        later = k + 1 < len(logs) and (logs[k + 1].pid, logs[k + 1].tid) == (log.pid, log.tid)
        parent = rows[-1][2] if earlier and log.parent_pid is None else log.parent_pid
        rows.append((log.tid, log.pid, parent, first, last, insns, plan.blocks_of(log), log.exited or later))
    if rows:
        con.executemany("INSERT INTO threads VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def load_syscalls(con, plan: PositionPlan, events: EventLog, arch: str) -> int:
    """The syscalls, syscall_strings and syscall_buffers tables, each call
    rendered as strace renders it (syscall_render); returns the number of calls."""
    ev = events.table()
    names = syscall_tables.names(arch)
    returns = pair_syscalls(ev)
    at = {}  # (stream, ordinal) -> idx of the syscall made there
    for e in ev[ev["kind"] == F.EV_SYSCALL]:
        if int(e["seq"]):  # 0: no position, a damaged stream
            at[(int(e["stream"]), int(e["ordinal"]))] = plan.syscall_position(int(e["seq"]))
    strings, buffers, memory = _syscall_blobs(ev, events, at)
    rows = []
    for e in ev[ev["kind"] == F.EV_SYSCALL]:
        stream, seq = int(e["stream"]), int(e["seq"])
        if not seq:
            continue
        idx = at[(stream, int(e["ordinal"]))]
        nr = int(np.int64(e["v"][0]))
        args = [syscall_tables.word(arch, int(x)) for x in e["v"][1:7]]
        ret = syscall_tables.result(arch, returns.get((stream, int(e["packet_seq"]), int(e["i"]))))
        text = syscall_render.render(syscall_render.Call(arch, nr, names.get(nr), tuple(args), ret,
                                                         *memory.get((idx, int(e["tid"])), ({}, {}))))
        rows.append((idx, int(e["tid"]), int(e["pid"]), nr, names.get(nr), *args, ret, seq, text))
    if rows:
        con.executemany(f"INSERT INTO syscalls VALUES ({', '.join('?' * 14)})", rows)
    if strings:
        con.executemany("INSERT INTO syscall_strings VALUES (?, ?, ?, ?, ?, ?, ?)", strings)
    if buffers:
        con.executemany("INSERT INTO syscall_buffers VALUES (?, ?, ?, ?, ?, ?, ?, ?)", buffers)
    return len(rows)


def _syscall_blobs(ev: np.ndarray, events: EventLog, at: dict):
    """syscall_strings and syscall_buffers rows, and the guest memory copied
    for each call, for the renderer: {(idx, tid): ({arg: Blob}, {(arg, item): Blob})}."""
    strings, buffers, memory = [], [], {}
    for e in ev[ev["kind"] == F.EV_BLOB]:
        idx = at.get((int(e["stream"]), int(e["ordinal"])))
        if idx is None:
            continue
        flags = int(e["v"][5])
        blob = events.blob(e)
        nr, arg = int(np.int64(e["v"][3])), int(e["v"][4])
        data = None if flags & F.BLOB_UNREADABLE else blob
        truncated = bool(flags & F.BLOB_TRUNCATED)
        call_strings, call_buffers = memory.setdefault((idx, int(e["tid"])), ({}, {}))
        if flags & F.BLOB_BUFFER:
            item = int(e["v"][6])
            buffers.append((idx, int(e["tid"]), nr, arg, item, int(e["v"][0]), data, truncated))
            call_buffers[(arg, item)] = syscall_render.Blob(data, truncated)
        else:
            strings.append((idx, int(e["tid"]), nr, arg, int(e["v"][0]),
                            None if data is None else blob.decode("utf-8", "backslashreplace"), truncated))
            call_strings[arg] = syscall_render.Blob(data, truncated)
    return strings, buffers, memory


def load_store_index(con, trace, n_parts: int) -> None:
    """The store's index tables (sorted for lookups) and its parts table."""
    for name, order in (("mem_lines", "line, idx_last"), ("exec_blocks", "block_id, idx_first")):
        if store.part_files(trace, name):
            files = store.glob(trace, name)
            con.execute(f"INSERT INTO {name} SELECT * FROM read_parquet({_sql_string(files)}) "
                        f"WHERE part < {n_parts} ORDER BY {order}")
    rows = []
    for name in store.BULK:
        for path in store.part_files(trace, name):
            if int(path.stem) >= n_parts:
                continue
            md = pq.ParquetFile(path).metadata
            row = 0
            for g in range(md.num_row_groups):
                rg = md.row_group(g)
                stats = rg.column(0).statistics  # idx is every bulk table's first column
                has = stats is not None and stats.has_min_max
                rows.append((name, int(path.stem), g, row, rg.num_rows, stats.min if has else None,
                             stats.max if has else None))
                row += rg.num_rows
    if rows:
        con.executemany("INSERT INTO parts VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def load_meta(con, meta: dict, **index_facts) -> None:
    """meta.json's fields, plus what the index knows (index_* keys, see docs/schema.md)."""
    entries = dict(meta)
    entries.update(
        index_facts,
        schema_version=schema.SCHEMA_VERSION,
        store_version=store.STORE_VERSION,
        # a meta.json older than the key is from plugin API 1, which has no register access
        regs_unavailable=meta["regs_unavailable"] if "regs_unavailable" in meta else tracedir.regs_unavailable(
            F.REGS_NO_API, meta),
    )
    con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in sorted(entries.items())])


def _sql_string(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"
