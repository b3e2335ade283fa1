"""The record format, mirrored from qemu_patches/cannoli_format.h.

This is the only Python definition of the on-disk layout.  tests/test_format.py
compiles a probe against the C header and checks every size, offset, magic and
capacity here against it.  docs/format.md describes the format in prose.
"""

from __future__ import annotations

import numpy as np

FORMAT_VERSION = 2
# Versions a reader accepts: 1 lacks the two REG sections (a 9-count header).
READABLE_VERSIONS = (1, 2)

CHUNK_MAGIC = b"CNDBCHNK"
PACKET_MAGIC = b"CNDBPAKT"
RING_MAGIC = b"CNDBRING"

# Sections of a packet, in on-disk order.
SEC_EXEC, SEC_MEM_ADDR, SEC_MEM_VALUE, SEC_MEM_INFO, SEC_EVENT = 0, 1, 2, 3, 4
SEC_BLOCK, SEC_INSN_SIZE, SEC_INSN_BYTES, SEC_BLOB = 5, 6, 7, 8
SEC_REG_VALUE, SEC_REG_INFO = 9, 10
NSECTIONS = 11
NSECTIONS_V1 = 9

CAP_EXEC = 65536
CAP_MEM = 65536
CAP_EVENT = 4096
CAP_BLOCK = 8192
CAP_INSN_SIZE = 65536
CAP_INSN_BYTES = 262144
CAP_BLOB = 262144
CAP_REG = 65536
MAX_BLOCK_INSNS = 512
MAX_BLOB_ITEM = 4096
MAX_CHUNK_RAW = 256 * 1024 * 1024

MEMINFO_SHIFT_MASK = 0x7
MEMINFO_STORE = 1 << 3
MEMINFO_BIGENDIAN = 1 << 4
MEMINFO_INSN_SHIFT = 5
MEMINFO_INSN_MASK = 0x1FF
MEMINFO_LINK_SHIFT = 14

REGINFO_NUMBER_MASK = 0xFF
REGINFO_LINK_SHIFT = 8
MAX_REGS = 64

EV_THREAD_START = 1
EV_THREAD_EXIT = 2
EV_SYSCALL = 3
EV_SYSRET = 4
EV_SEGMENT = 5
EV_PARTIAL = 6
EV_BLOB = 7
EV_PROCESS = 8
EV_REG_NAME = 9

BLOB_STRING = 1
BLOB_TRUNCATED = 2
BLOB_UNREADABLE = 4
BLOB_BUFFER = 8

BLOCK_TWIN = 1

PACKET_SALVAGED = 1
PACKET_LAST = 2

# An event ordinal of all ones: before the thread's first block (a fork child's
# return from fork).
ORDINAL_BEFORE_FIRST = 0xFFFF_FFFF_FFFF_FFFF

EVENT_DTYPE = np.dtype(
    [
        ("kind", "<u2"),
        ("flags", "<u2"),
        ("reserved", "<u4"),
        ("ordinal", "<u8"),
        ("seq", "<u8"),
        ("v", "<u8", (7,)),
    ],
    align=True,
)

BLOCK_DTYPE = np.dtype(
    [
        ("pc", "<u8"),
        ("block_id", "<u4"),
        ("n_insns", "<u2"),
        ("flags", "<u2"),
        ("n_bytes", "<u4"),
        ("base_id", "<u4"),
    ],
    align=True,
)

def _packet_header_dtype(nsections: int) -> np.dtype:
    return np.dtype(
        [
            ("magic", "S8"),
            ("version", "<u2"),
            ("header_size", "<u2"),
            ("flags", "<u4"),
            ("pid", "<u4"),
            ("tid", "<u4"),
            ("packet_seq", "<u8"),
            ("exec_first", "<u8"),
            ("count", "<u4", (nsections,)),
            ("cur_done", "<u4"),
            ("cur_progress", "<u4"),
            ("cur_accessed", "<u4"),
            ("reserved0", "<u4"),
            ("reserved1", "<u8"),
        ],
        align=True,
    )


PACKET_HEADER_DTYPE = _packet_header_dtype(NSECTIONS)
# The packet header of each readable format version.
PACKET_HEADER_DTYPES = {1: _packet_header_dtype(NSECTIONS_V1), 2: PACKET_HEADER_DTYPE}

CHUNK_HEADER_DTYPE = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u2"),
        ("header_size", "<u2"),
        ("n_packets", "<u4"),
        ("chunk_seq", "<u8"),
        ("payload_size", "<u8"),
        ("raw_size", "<u8"),
        ("payload_crc32", "<u4"),
        ("header_crc32", "<u4"),
        ("n_exec", "<u8"),
        ("n_mem", "<u8"),
        ("n_event", "<u8"),
    ],
    align=True,
)

# Record dtype and capacity of each section, by section number.
SECTION_DTYPES = (
    np.dtype("<u4"),
    np.dtype("<u8"),
    np.dtype("<u8"),
    np.dtype("<u4"),
    EVENT_DTYPE,
    BLOCK_DTYPE,
    np.dtype("u1"),
    np.dtype("u1"),
    np.dtype("u1"),
    np.dtype("<u8"),
    np.dtype("<u4"),
)
SECTION_CAPACITY = (
    CAP_EXEC,
    CAP_MEM,
    CAP_MEM,
    CAP_MEM,
    CAP_EVENT,
    CAP_BLOCK,
    CAP_INSN_SIZE,
    CAP_INSN_BYTES,
    CAP_BLOB,
    CAP_REG,
    CAP_REG,
)
SECTION_NAMES = (
    "exec",
    "mem_addr",
    "mem_value",
    "mem_info",
    "event",
    "block",
    "insn_size",
    "insn_bytes",
    "blob",
    "reg_value",
    "reg_info",
)
