"""Decoding chunk files and packets into numpy arrays.

Everything read here is untrusted: a chunk may be truncated, damaged, or made by
someone else.  Every length and count is checked against the format's limits
before it is used, and each section is one numpy.frombuffer call: no Python
loop per event.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import zstandard

from . import format as F


class ChunkError(Exception):
    """A chunk file that is not a whole, valid chunk.  `chunk` names it."""

    def __init__(self, chunk: str, reason: str):
        super().__init__(f"chunk {chunk}: {reason}")
        self.chunk = chunk
        self.reason = reason


@dataclass
class Packet:
    """One lane snapshot of one thread (see cannoli_format.h)."""

    flags: int
    pid: int
    tid: int
    packet_seq: int
    exec_first: int
    cur_done: bool
    cur_progress: int
    cur_accessed: int
    exec: np.ndarray        # uint32 block ids
    mem_addr: np.ndarray    # uint64 (on-disk transforms undone)
    mem_value: np.ndarray   # uint64
    mem_info: np.ndarray    # uint32
    events: np.ndarray      # EVENT_DTYPE
    blocks: np.ndarray      # BLOCK_DTYPE
    insn_size: np.ndarray   # uint8
    insn_bytes: np.ndarray  # uint8
    blob: np.ndarray        # uint8
    reg_value: np.ndarray   # uint64 (format 2; empty in format 1)
    reg_info: np.ndarray    # uint32

    @property
    def thread(self) -> tuple[int, int]:
        return (self.pid, self.tid)


@dataclass
class PacketView:
    """A packet's header and where its sections lie, before any section is decoded."""

    header: np.void
    counts: list[int]
    offsets: list[int]  # byte offset of each section in the buffer
    end: int            # byte offset just past the packet

    def section(self, buf, s: int) -> np.ndarray:
        """Section s as stored (before undoing the on-disk transforms)."""
        dtype = np.dtype("u1") if s in _TRANSFORMED else F.SECTION_DTYPES[s]
        return np.frombuffer(buf, dtype, _section_bytes(s, self.counts[s]) // dtype.itemsize, self.offsets[s])


_TRANSFORMED = (F.SEC_MEM_ADDR, F.SEC_MEM_VALUE, F.SEC_MEM_INFO, F.SEC_REG_VALUE, F.SEC_REG_INFO)


def _section_bytes(s: int, count: int) -> int:
    # MEM_VALUE's count is its length in bytes (values are cut to their size)
    return count if s == F.SEC_MEM_VALUE else count * F.SECTION_DTYPES[s].itemsize


def _section_limit(s: int) -> int:
    return F.CAP_MEM * 8 if s == F.SEC_MEM_VALUE else F.SECTION_CAPACITY[s]


def view_packet(buf, pos: int, chunk: str = "?") -> PacketView:
    """Check the header at `pos` and locate the sections; nothing is decoded."""
    if len(buf) - pos < 12:
        raise ChunkError(chunk, f"truncated packet header at byte {pos}")
    magic, version = bytes(buf[pos : pos + 8]), int.from_bytes(buf[pos + 8 : pos + 10], "little")
    if magic != F.PACKET_MAGIC:
        raise ChunkError(chunk, f"bad packet magic at byte {pos}")
    dtype = F.PACKET_HEADER_DTYPES.get(version)
    if dtype is None:
        raise ChunkError(chunk, f"packet format version {version}; this Cannoli DB reads versions "
                                f"{', '.join(map(str, F.READABLE_VERSIONS))}")
    hsize = dtype.itemsize
    if len(buf) - pos < hsize:
        raise ChunkError(chunk, f"truncated packet header at byte {pos}")
    h = np.frombuffer(buf, dtype, 1, pos)[0]
    if int(h["header_size"]) != hsize:
        raise ChunkError(chunk, f"packet header size {int(h['header_size'])}, version {version} has {hsize}")
    # a version-1 packet is a version-2 one without registers
    counts = [int(c) for c in h["count"]] + [0] * (F.NSECTIONS - len(h["count"]))
    offsets = []
    pos += hsize
    for s, count in enumerate(counts):
        if count > _section_limit(s):
            raise ChunkError(chunk, f"packet claims {count} {F.SECTION_NAMES[s]} records (limit {_section_limit(s)})")
        nbytes = _section_bytes(s, count)
        if pos + nbytes > len(buf):
            raise ChunkError(chunk, f"truncated {F.SECTION_NAMES[s]} section")
        offsets.append(pos)
        pos += nbytes
    if counts[F.SEC_MEM_ADDR] != counts[F.SEC_MEM_INFO]:
        raise ChunkError(chunk, "memory sections disagree on their length")
    if counts[F.SEC_REG_VALUE] != counts[F.SEC_REG_INFO]:
        raise ChunkError(chunk, "register sections disagree on their length")
    return PacketView(h, counts, offsets, pos)


def iter_views(buf, chunk: str = "?") -> Iterator[PacketView]:
    pos = 0
    while pos < len(buf):
        view = view_packet(buf, pos, chunk)
        yield view
        pos = view.end


def _unplane(raw: np.ndarray, n: int, dtype: str) -> np.ndarray:
    width = np.dtype(dtype).itemsize
    return np.ascontiguousarray(raw.reshape(width, n).T).view(dtype).reshape(n)


def _decode_values(raw: np.ndarray, info: np.ndarray, chunk: str) -> np.ndarray:
    shift = info & F.MEMINFO_SHIFT_MASK
    if np.any(shift > 3):
        raise ChunkError(chunk, "memory access wider than 8 bytes in a format-1 packet")
    values = np.zeros(len(info), np.uint64)
    pos = 0
    for k in range(4):
        mask = shift == k
        n = int(np.count_nonzero(mask))
        width = 1 << k
        if pos + n * width > len(raw):
            raise ChunkError(chunk, "memory value section shorter than its accesses need")
        values[mask] = raw[pos : pos + n * width].view(f"<u{width}")
        pos += n * width
    if pos != len(raw):
        raise ChunkError(chunk, "memory value section longer than its accesses need")
    return values


def _decode_registers(view: PacketView, buf, chunk: str) -> tuple[np.ndarray, np.ndarray]:
    """REG_INFO and REG_VALUE with their on-disk transforms undone: each value is
    the running sum of its register's deltas in the packet."""
    n = view.counts[F.SEC_REG_INFO]
    info = np.cumsum(_unplane(view.section(buf, F.SEC_REG_INFO), n, "<u4"), dtype=np.uint32)
    deltas = _unplane(view.section(buf, F.SEC_REG_VALUE), n, "<u8")
    number = info & F.REGINFO_NUMBER_MASK
    if np.any(number >= F.MAX_REGS):
        raise ChunkError(chunk, f"register number beyond {F.MAX_REGS - 1}")
    order = np.argsort(number, kind="stable")
    running = np.cumsum(deltas[order], dtype=np.uint64)
    sorted_number = number[order]
    first = np.flatnonzero(np.r_[True, sorted_number[1:] != sorted_number[:-1]])  # each register's first
    # (uint64 throughout: mixing in a Python int would go through float64 and lose bits)
    before = np.concatenate([np.zeros(1, np.uint64), running[first[1:] - 1]])
    values = np.empty(n, np.uint64)
    values[order] = running - np.repeat(before, np.diff(np.append(first, n)))
    return info, values


def decode_packet(buf, view: PacketView, chunk: str = "?", with_mem: bool = True) -> Packet:
    n_mem = view.counts[F.SEC_MEM_ADDR] if with_mem else 0
    addr = np.cumsum(_unplane(view.section(buf, F.SEC_MEM_ADDR)[: 8 * n_mem], n_mem, "<u8"), dtype=np.uint64)
    info = np.cumsum(_unplane(view.section(buf, F.SEC_MEM_INFO)[: 4 * n_mem], n_mem, "<u4"), dtype=np.uint32)
    values = view.section(buf, F.SEC_MEM_VALUE) if with_mem else np.zeros(0, np.uint8)
    reg_info, reg_value = _decode_registers(view, buf, chunk)
    h = view.header
    return Packet(
        flags=int(h["flags"]),
        pid=int(h["pid"]),
        tid=int(h["tid"]),
        packet_seq=int(h["packet_seq"]),
        exec_first=int(h["exec_first"]),
        cur_done=bool(h["cur_done"]),
        cur_progress=int(h["cur_progress"]),
        cur_accessed=int(h["cur_accessed"]),
        exec=view.section(buf, F.SEC_EXEC),
        mem_addr=addr,
        mem_value=_decode_values(values, info, chunk),
        mem_info=info,
        events=view.section(buf, F.SEC_EVENT),
        blocks=view.section(buf, F.SEC_BLOCK),
        insn_size=view.section(buf, F.SEC_INSN_SIZE),
        insn_bytes=view.section(buf, F.SEC_INSN_BYTES),
        blob=view.section(buf, F.SEC_BLOB),
        reg_value=reg_value,
        reg_info=reg_info,
    )


def parse_packets(raw: bytes | memoryview, chunk: str = "?", with_mem: bool = True) -> list[Packet]:
    """Split a chunk's decompressed content into packets, validating each.
    with_mem=False skips decoding the memory sections (they come back empty)."""
    buf = memoryview(raw)
    return [decode_packet(buf, view, chunk, with_mem) for view in iter_views(buf, chunk)]


def read_chunk_header(data: bytes, chunk: str) -> np.void:
    hsize = F.CHUNK_HEADER_DTYPE.itemsize
    if len(data) < hsize:
        raise ChunkError(chunk, f"truncated: {len(data)} bytes, shorter than the {hsize}-byte header")
    h = np.frombuffer(data, F.CHUNK_HEADER_DTYPE, 1)[0]
    if bytes(h["magic"]) != F.CHUNK_MAGIC:
        raise ChunkError(chunk, "not a Cannoli DB chunk (bad magic)")
    if int(h["version"]) not in F.READABLE_VERSIONS:
        raise ChunkError(chunk, f"format version {int(h['version'])}; this Cannoli DB reads versions "
                                f"{', '.join(map(str, F.READABLE_VERSIONS))}")
    if int(h["header_size"]) != hsize:
        raise ChunkError(chunk, "header size does not match the format version")
    check = bytearray(data[:hsize])
    crc_at = F.CHUNK_HEADER_DTYPE.fields["header_crc32"][1]
    check[crc_at : crc_at + 4] = bytes(4)
    if zlib.crc32(check) != int(h["header_crc32"]):
        raise ChunkError(chunk, "header checksum mismatch (damaged header)")
    return h


def decode_chunk_bytes(data: bytes, chunk: str = "?", with_mem: bool = True) -> list[Packet]:
    """Validate and decode one chunk file's bytes."""
    h = read_chunk_header(data, chunk)
    hsize = F.CHUNK_HEADER_DTYPE.itemsize
    payload_size = int(h["payload_size"])
    raw_size = int(h["raw_size"])
    if raw_size > F.MAX_CHUNK_RAW:
        raise ChunkError(chunk, f"claims {raw_size} bytes of content (limit {F.MAX_CHUNK_RAW})")
    if len(data) != hsize + payload_size:
        raise ChunkError(chunk, f"truncated or padded: {len(data) - hsize} payload bytes, header says {payload_size}")
    payload = memoryview(data)[hsize:]
    if zlib.crc32(payload) != int(h["payload_crc32"]):
        raise ChunkError(chunk, "payload checksum mismatch (damaged data)")
    try:
        raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw_size)
    except zstandard.ZstdError as exc:
        raise ChunkError(chunk, f"cannot decompress: {exc}") from None
    if len(raw) != raw_size:
        raise ChunkError(chunk, f"decompressed to {len(raw)} bytes, header says {raw_size}")
    packets = parse_packets(raw, chunk, with_mem)
    if len(packets) != int(h["n_packets"]):
        raise ChunkError(chunk, f"holds {len(packets)} packets, header says {int(h['n_packets'])}")
    return packets


def decode_chunk_file(path: Path, with_mem: bool = True) -> list[Packet]:
    return decode_chunk_bytes(path.read_bytes(), path.name, with_mem)


def chunk_files(trace_dir: Path) -> list[Path]:
    """The trace's chunk files in sequence order (temporary files are not chunks)."""
    return sorted(p for p in (trace_dir / "chunks").glob("*.zst") if p.stem.isdigit())


def iter_packets(trace_dir: Path) -> Iterator[Packet]:
    for path in chunk_files(trace_dir):
        yield from decode_chunk_file(path)
