"""The trace database's tables, defined once and documented column by column
in docs/schema.md.

Positions: `idx` is the global instruction position (0-based, dense, one per
executed guest instruction across all threads).  Addresses and values are
unsigned 64-bit; where QEMU cannot give a value the column is NULL.  Columns
that hold addresses or raw values carry `info=HEX`: tables show them in hex.

Two kinds of tables:
* the small ones live in TRACE/trace.duckdb: defined here with SQLAlchemy Core,
  compiled for DuckDB (create_statements), bulk-loaded through Arrow;
* the bulk ones (exec, mem, regs, regs_keys) are the Parquet store
  (cannoli_db.store, columns in store.SCHEMAS): views over its files, made
  when a trace is opened (view_statements), so the trace directory can move.
"""

from __future__ import annotations

from duckdb_engine import Dialect
from duckdb_engine.datatypes import UBigInteger, UInteger, USmallInteger, UTinyInteger
from sqlalchemy import BigInteger, Boolean, Column, Integer, LargeBinary, MetaData, String, Table
from sqlalchemy.schema import CreateTable

from .format import MAX_BLOCK_INSNS, SEGMENT_BLOCKS
from .hex_columns import INFO as HEX  # an address or raw value: tables show it in hex (hex_columns.py)

SCHEMA_VERSION = 4

metadata = MetaData()


def _idx():
    return Column("idx", UBigInteger, nullable=False, comment="global instruction position")


def _tid():
    return Column("tid", UInteger, nullable=False, comment="guest thread id")


meta = Table(
    "meta", metadata,
    Column("key", String, nullable=False),
    Column("value", String, comment="JSON-encoded value"),
)

threads = Table(
    "threads", metadata,
    _tid(),
    Column("pid", UInteger, nullable=False, comment="process id (differs from the first process after fork)"),
    Column("parent_pid", UInteger, comment="for a fork child's first thread, the forking process"),
    Column("first_idx", UBigInteger, comment="position of the thread's first instruction"),
    Column("last_idx", UBigInteger, comment="position of the thread's last instruction"),
    Column("insns", UBigInteger, nullable=False, comment="instructions the thread executed"),
    Column("blocks", UBigInteger, nullable=False, comment="blocks the thread executed"),
    Column("exited", Boolean, nullable=False, comment="the thread's exit (or its exec into a later row) was recorded"),
)

blocks = Table(
    "blocks", metadata,
    Column("block_id", UInteger, nullable=False),
    Column("pc", UBigInteger, nullable=False, comment="address of the first instruction", info=HEX),
    Column("size", UInteger, nullable=False, comment="bytes of instructions"),
    Column("icount", USmallInteger, nullable=False, comment="instructions"),
    Column("bytes", LargeBinary, nullable=False, comment="the instruction bytes as translated"),
    Column("base_id", UInteger, nullable=False, comment="for a twin, the full block it is a prefix of"),
    Column("is_twin", Boolean, nullable=False, comment="a prefix of base_id that ran when QEMU stopped early"),
)

block_insns = Table(
    "block_insns", metadata,
    Column("block_id", UInteger, nullable=False),
    Column("n", USmallInteger, nullable=False, comment="0-based index in the block"),
    Column("pc", UBigInteger, nullable=False, info=HEX),
    Column("size", UTinyInteger, nullable=False, comment="bytes"),
)

syscalls = Table(
    "syscalls", metadata,
    Column("idx", UBigInteger, nullable=False, comment="position of the syscall instruction"),
    _tid(),
    Column("pid", UInteger, nullable=False),
    Column("nr", BigInteger, nullable=False),
    Column("name", String, comment="from the architecture's syscall table; NULL if unknown"),
    *[Column(f"arg{i}", UBigInteger, nullable=False, info=HEX) for i in range(6)],
    Column("ret", BigInteger, comment="return value; NULL if the call never returned (exit, a kill)"),
    Column("seq", UBigInteger, nullable=False, comment="global order of syscall entries"),
    Column("call", String, nullable=False, comment="the call as strace prints it (syscall_render.py)"),
)

syscall_strings = Table(
    "syscall_strings", metadata,
    Column("idx", UBigInteger, nullable=False, comment="position of the syscall instruction"),
    _tid(),
    Column("nr", BigInteger, nullable=False),
    Column("arg", UTinyInteger, nullable=False, comment="0-based argument index"),
    Column("addr", UBigInteger, nullable=False, comment="the guest pointer", info=HEX),
    Column("value", String, comment="the string (NULL if the pointer was unreadable)"),
    Column("truncated", Boolean, nullable=False, comment="longer than 4096 bytes: only the prefix"),
)

syscall_buffers = Table(
    "syscall_buffers", metadata,
    Column("idx", UBigInteger, nullable=False, comment="position of the syscall instruction"),
    _tid(),
    Column("nr", BigInteger, nullable=False),
    Column("arg", UTinyInteger, nullable=False, comment="0-based argument index"),
    Column("item", UInteger, nullable=False, comment="0: what the argument points to; k: iovec element k-1"),
    Column("addr", UBigInteger, nullable=False, comment="the guest pointer", info=HEX),
    Column("data", LargeBinary, comment="the bytes (NULL if the pointer was unreadable)"),
    Column("truncated", Boolean, nullable=False, comment="longer than 4096 bytes: only the prefix"),
)

mmaps = Table(
    "mmaps", metadata,
    Column("idx", UBigInteger, comment="position of the syscall; for the initial layout NULL, or where an exec'd image began"),
    Column("tid", UInteger),
    Column("pid", UInteger, nullable=False),
    Column("kind", String, nullable=False, comment="initial, mmap, munmap, mprotect, brk, mremap"),
    Column("start", UBigInteger, nullable=False, info=HEX),
    Column("end", UBigInteger, nullable=False, comment="exclusive", info=HEX),
    Column("prot", Integer, comment="PROT_* bits; NULL where the call does not set them"),
    Column("flags", Integer, comment="MAP_* bits of mmap/mremap"),
    Column("path", String, comment="backing file, from the open call that made the descriptor"),
    Column("file_offset", UBigInteger),
)

modules = Table(
    "modules", metadata,
    Column("pid", UInteger, nullable=False),
    Column("path", String, nullable=False),
    Column("start", UBigInteger, nullable=False, comment="lowest mapped address of the image", info=HEX),
    Column("end", UBigInteger, nullable=False, comment="exclusive", info=HEX),
    Column("load_bias", UBigInteger, nullable=False, comment="added to the ELF's addresses", info=HEX),
    Column("kind", String, nullable=False, comment="executable, interpreter or library"),
    Column("image_idx", UBigInteger, nullable=False,
           comment="where the program image it belongs to began: 0 for a process's first, else after its exec"),
)

symbols = Table(
    "symbols", metadata,
    Column("pid", UInteger, nullable=False),
    Column("module", String, nullable=False),
    Column("name", String, nullable=False),
    Column("addr", UBigInteger, nullable=False, comment="relocated to the load address", info=HEX),
    Column("size", UBigInteger, nullable=False),
    Column("kind", String, nullable=False, comment="FUNC or OBJECT"),
)

# Register names by number (regs_keys has numbers only)
reg_names = Table(
    "reg_names", metadata,
    Column("n", UTinyInteger, nullable=False, comment="register number: the order QEMU lists them"),
    Column("reg", String, nullable=False, comment="gdb name: rax, x0, a0, eflags, ..."),
)

# The address index of the store: per packet, the mem rows that touch a 64-byte
# line and which of its bytes they read and wrote (store/__init__.py).
mem_lines = Table(
    "mem_lines", metadata,
    Column("line", UBigInteger, nullable=False, comment="address >> 6"),
    Column("part", UInteger, nullable=False, comment="the mem part (chunk number)"),
    Column("row_first", UInteger, nullable=False, comment="first row of the part touching the line"),
    Column("row_last", UInteger, nullable=False, comment="last such row"),
    Column("idx_first", UBigInteger, nullable=False, comment="position of the first such access"),
    Column("idx_last", UBigInteger, nullable=False, comment="position of the last such access"),
    Column("read_bytes", UBigInteger, nullable=False, comment="bit k: byte k of the line was read"),
    Column("written_bytes", UBigInteger, nullable=False, comment="bit k: byte k was written"),
)

# The block index of the store: per packet, the exec rows that run a block.
exec_blocks = Table(
    "exec_blocks", metadata,
    Column("block_id", UInteger, nullable=False),
    Column("part", UInteger, nullable=False, comment="the exec part (chunk number)"),
    Column("row_first", UInteger, nullable=False),
    Column("row_last", UInteger, nullable=False),
    Column("idx_first", UBigInteger, nullable=False, comment="position of the first execution"),
    Column("idx_last", UBigInteger, nullable=False, comment="position of the last one"),
)

# The store's files: one row per part and row group.
parts = Table(
    "parts", metadata,
    Column("tbl", String, nullable=False, comment="exec, mem, regs, regs_keys"),
    Column("part", UInteger, nullable=False, comment="chunk number"),
    Column("row_group", UInteger, nullable=False),
    Column("row_first", UBigInteger, nullable=False, comment="first row of the row group in the part"),
    Column("rows", UBigInteger, nullable=False),
    Column("idx_min", UBigInteger, comment="smallest position in the row group"),
    Column("idx_max", UBigInteger, comment="largest position"),
)

# One row per frame: a call (or a signal handler's entry) and how it left the stack, from the executed
# blocks alone (calls.py, qemu_patches/call_stack.c).  Stored in the order frames left their stacks, so
# end_idx rises and the per-row-group min/max of call_idx and end_idx let Trace.stack skip every row
# group without a frame open at its position.
calls = Table(
    "calls", metadata,
    _tid(),
    Column("call_idx", UBigInteger, nullable=False, comment="position of the call instruction (signal: the last one before the handler)"),
    Column("ret_idx", UBigInteger, comment="position of its own return (signal: the rt_sigreturn); NULL if it never returned"),
    Column("end_idx", UBigInteger, nullable=False, comment="last position inside the frame: its return, where it was unwound, or the thread's last"),
    Column("depth", UInteger, nullable=False, comment="frames below it on the thread's stack"),
    Column("parent", UBigInteger, comment="call_idx of the frame below it (at depth - 1); NULL at depth 0"),
    Column("kind", String, nullable=False, comment="call or signal"),
    Column("caller_pc", UBigInteger, nullable=False, comment="the call instruction (signal: the last instruction before it)", info=HEX),
    Column("callee_pc", UBigInteger, comment="the first pc after the call: the function entered (signal: the handler)", info=HEX),
    Column("insns", UBigInteger, comment="instructions the thread ran inside the frame; NULL if it did not end"),
    Column("sp", UBigInteger, comment="stack pointer at the callee's first block; NULL without registers", info=HEX),
)

NEVER = (1 << 64) - 1       # the largest position: "no bound"
KEY_REACH = SEGMENT_BLOCKS * MAX_BLOCK_INSNS + MAX_BLOCK_INSNS - 1  # 524,799

def insns_select(exec_rows: str, lo: str, hi: str) -> str:
    """The executed instructions at positions [lo, hi) of the relation
    `exec_rows` (exec or rows of it): a block's instructions follow its exec
    row, which starts at most MAX_BLOCK_INSNS - 1 before lo."""
    return f"""SELECT e.idx + bi.n AS idx, e.tid, bi.pc, bi.size, e.block_id, bi.n
        FROM {exec_rows} e JOIN block_insns bi ON bi.block_id = e.block_id AND bi.n < e.icount
        WHERE e.idx >= greatest({lo}::UBIGINT, {MAX_BLOCK_INSNS}) - {MAX_BLOCK_INSNS} AND e.idx < {hi}::UBIGINT
          AND e.idx + bi.n >= {lo}::UBIGINT AND e.idx + bi.n < {hi}::UBIGINT"""


# SQL pieces that several queries share, as DuckDB macros (temporary, made on
# every connection before the views).
MACROS = {
    # a position bound that may be NULL (no bound)
    "or_end": f"(p) AS coalesce(p::UBIGINT, {NEVER}::UBIGINT)",
    # the access [addr, addr + size) touches bytes [lo, lo + n): it is at most
    # 8 bytes wide, so it starts in [lo - 7, lo + n - 1]
    "touches": "(addr, size, lo, n) AS addr BETWEEN greatest(lo::UBIGINT, 7) - 7 AND lo::UBIGINT + n - 1 "
               "AND addr + size > lo::UBIGINT",
    # positions of thread states before `at` that a register keyframe can be
    # (a segment's first block starts at most SEGMENT_BLOCKS blocks back)
    "keyframe_reach": f"(pos, here) AS pos <= here::UBIGINT AND pos >= greatest(here::UBIGINT, {KEY_REACH}) - {KEY_REACH}",
    # the executed instructions at positions [lo, hi)
    "insns_between": f"(lo, hi) AS TABLE {insns_select('exec', 'lo', 'hi')}",
}

VIEWS = {
    # one row per executed instruction
    "insns": f"SELECT * FROM insns_between(0, {NEVER})",
    # schema 2's address-sorted copy of mem, kept by name for old queries (the
    # address index is mem_lines now)
    "mem_by_addr": "SELECT addr, idx, tid, pc, size, is_write, value FROM mem",
}


def create_macros(con) -> None:
    for name, body in MACROS.items():
        con.execute(f"CREATE OR REPLACE TEMP MACRO {name}{body}")


def create_statements() -> list[str]:
    """DDL of the tables that live in trace.duckdb."""
    dialect = Dialect()
    return [str(CreateTable(table).compile(dialect=dialect)).strip() for table in metadata.sorted_tables]
