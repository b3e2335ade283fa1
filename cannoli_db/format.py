"""The record format, mirrored from qemu_patches/cannoli_format.h and
cannoli_ring.h.

This is the only Python definition of the record layout (chunks, packets,
events, the shared-memory ring).  tests/test_format.py compiles a probe against
the C headers and checks every struct, offset and `CN_` constant here against
them.  docs/format.md describes the format in prose; the Parquet store that
holds the heavy sections after conversion is defined in cannoli_db/store.
"""

from __future__ import annotations

import numpy as np

FORMAT_VERSION = 4
# Versions a reader accepts: 3 stores memory accesses as deltas in byte planes,
# 2 also has seq-ordered segments and one frame per chunk, 1 also lacks the two
# REG sections (a 9-count packet header).
READABLE_VERSIONS = (1, 2, 3, 4)
# Versions the indexer accepts (from 3 on, positions are drawn while recording).
INDEXABLE_VERSIONS = (3, 4)

CHUNK_MAGIC = b"CNDBCHNK"
PACKET_MAGIC = b"CNDBPAKT"
RING_MAGIC = b"CNDBRING"

# Sections of a packet, in on-disk order.
SEC_EXEC, SEC_MEM_ADDR, SEC_MEM_VALUE, SEC_MEM_INFO, SEC_EVENT = 0, 1, 2, 3, 4
SEC_BLOCK, SEC_INSN_SIZE, SEC_INSN_BYTES, SEC_BLOB = 5, 6, 7, 8
SEC_REG_VALUE, SEC_REG_INFO = 9, 10
SEC_LINE = 11
NSECTIONS = 12
NSECTIONS_V1 = 9
NSECTIONS_V2 = 11
# Sections stored in a version-3 chunk's side frame; the others are heavy.
SIDE_SECTIONS = ((1 << SEC_EVENT) | (1 << SEC_BLOCK) | (1 << SEC_INSN_SIZE) | (1 << SEC_INSN_BYTES) | (1 << SEC_BLOB)
                 | (1 << SEC_LINE))
SIDE = tuple(s for s in range(NSECTIONS) if SIDE_SECTIONS >> s & 1)
HEAVY = tuple(s for s in range(NSECTIONS) if not SIDE_SECTIONS >> s & 1)

CAP_EXEC = 65536
CAP_MEM = 65536
CAP_EVENT = 4096
CAP_BLOCK = 8192
CAP_INSN_SIZE = 65536
CAP_INSN_BYTES = 262144
CAP_BLOB = 262144
CAP_REG = 65536
CAP_LINE = 131072
MAX_BLOCK_INSNS = 512
SEGMENT_BLOCKS = 1024
MAX_BLOB_ITEM = 4096
MAX_CHUNK_RAW = 256 * 1024 * 1024

LINE_SHIFT = 6

MEMINFO_SHIFT_MASK = 0x7
MEMINFO_STORE = 1 << 3
MEMINFO_BIGENDIAN = 1 << 4
MEMINFO_INSN_SHIFT = 5
MEMINFO_INSN_MASK = 0x1FF
MEMINFO_LINK_SHIFT = 14
MEMINFO_LOW_MASK = 0x3FFF

# Records on disk, version 4 (cannoli_format.h; qemu_patches/record_codec.c).
MEM_SLOT_BITS = 16
MEM_SLOT_MUL_BLOCK = 0x9E3779B1
MEMCTL_ADDR_SHIFT = 0
MEMCTL_ADDR_MASK = 0x3
MEMCTL_VALUE_SHIFT = 2
MEMCTL_VALUE_MASK = 0x7
MEMCTL_INFO_EXPLICIT = 1 << 5
MEMCTL_LINK_SHIFT = 6
MEMCTL_LINK_EXPLICIT = 3
MEMCTL_ADDR_WIDTHS = 0x08030100
MEMCTL_VALUE_WIDTHS = 0x0806050403020100

REGINFO_NUMBER_MASK = 0xFF
REGINFO_LINK_SHIFT = 8
REGINFO_LINK_MASK = 0x3FFFFF
REGINFO_CHANGED = 1 << 30
REGINFO_KEYFRAME = 1 << 31
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
PACKET_CONTINUES = 4

CHUNK_HEAVY_IN_STORE = 1

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

LINE_DTYPE = np.dtype(
    [
        ("line", "<u8"),
        ("read_bytes", "<u8"),
        ("written_bytes", "<u8"),
        ("first", "<u4"),
        ("last", "<u4"),
    ],
    align=True,
)


def _packet_header_dtype(nsections: int, n_mem: bool = False) -> np.dtype:
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
            ("stream", "<u4"),      # versions 1-2: reserved, 0
            ("seg_insns", "<u8"),   # versions 1-2: reserved, 0
            *([("n_mem", "<u4"), ("n_regs", "<u4")] if n_mem else []),  # version 4
        ],
        align=True,
    )


PACKET_HEADER_DTYPE = _packet_header_dtype(NSECTIONS, n_mem=True)
# The packet header of each readable format version.
PACKET_HEADER_DTYPES = {1: _packet_header_dtype(NSECTIONS_V1), 2: _packet_header_dtype(NSECTIONS_V2),
                        3: _packet_header_dtype(NSECTIONS), 4: PACKET_HEADER_DTYPE}

CHUNK_HEADER_DTYPE = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u2"),
        ("header_size", "<u2"),
        ("n_packets", "<u4"),
        ("chunk_seq", "<u8"),
        ("side_size", "<u8"),
        ("side_raw", "<u8"),
        ("heavy_size", "<u8"),
        ("heavy_raw", "<u8"),
        ("side_crc32", "<u4"),
        ("heavy_crc32", "<u4"),
        ("flags", "<u4"),
        ("header_crc32", "<u4"),
        ("n_exec", "<u8"),
        ("n_mem", "<u8"),
        ("n_event", "<u8"),
    ],
    align=True,
)

# Versions 1-2: one frame of whole packets after a 72-byte header.
CHUNK_HEADER_DTYPE_V2 = np.dtype(
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
    LINE_DTYPE,
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
    CAP_LINE,
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
    "line",
)


# ---- the shared-memory ring (qemu_patches/cannoli_ring.h) --------------------

RING_VERSION = 4
LANE_FREE, LANE_OWNED, LANE_FULL = 0, 1, 2
HITS_CAPACITY = 4 * 1024 * 1024
# enum cn_regs_state: why registers are or are not recorded
REGS_UNSET, REGS_RECORDED, REGS_OFF, REGS_NO_API, REGS_NONE_KNOWN = 0, 1, 2, 3, 4

RING_HEADER_DTYPE = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u4"),
        ("format_version", "<u4"),
        ("n_lanes", "<u4"),
        ("recorder_pid", "<u4"),
        ("lane_stride", "<u8"),
        ("next_idx", "<u8"),
        ("next_block_id", "<u8"),
        ("guest_base", "<u8"),
        ("plugin_api", "<u4"),
        ("plugin_ready", "<u4"),
        ("producer_waits", "<u8"),
        ("lanes_published", "<u8"),
        ("stop", "<u4"),
        ("mem_enabled", "<u4"),
        ("target", "S32"),
        ("hits_offset", "<u8"),
        ("hits_capacity", "<u8"),
        ("regs_recorded", "<u4"),
        ("regs_state", "<u4"),
        ("regs_missed", "<u8"),
        ("next_stream", "<u8"),
        ("inline_records", "<u4"),
        ("reserved32", "<u4"),
        ("reserved", "<u8", (2,)),
    ]
)

LANE_HEADER_DTYPE = np.dtype(
    [
        ("state", "<u4"),
        ("flags", "<u4"),
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("packet_seq", "<u8"),
        ("exec_first", "<u8"),
        ("count", "<u4", (NSECTIONS,)),
        ("cur_done", "<u4"),
        ("cur_accessed", "<u4"),
        ("cur_block", "<u4"),
        ("stream", "<u4"),
        ("cur_snap", "<u8"),
        ("seg_insns", "<u8"),
    ],
    align=True,
)
