"""Decoding chunk files and packets into numpy arrays.

Everything read here is untrusted: a chunk may be truncated, damaged, or made by
someone else.  Every length and count is checked against the format's limits
before it is used, and each section is one numpy.frombuffer call: no Python
loop per event.

A version 3-4 chunk holds two zstd frames: the side frame (each packet's header
and its EVENT, BLOCK, INSN_SIZE, INSN_BYTES and BLOB sections) and the heavy
frame (each packet's EXEC, MEM_* and REG_* sections, in the same packet order).
Reading the side frame alone is enough for everything but the bulk rows; once
those rows are in the Parquet store the heavy frame may be gone
(CN_CHUNK_HEAVY_IN_STORE).  Versions 1-2 hold one frame of whole packets.
Version 4's memory and register sections are decoded by the recorder's own C
codec (cannoli_db/native/record_codec.py); older transforms are undone here.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import zstandard

from . import format as F
from . import tracedir
from .native import record_codec


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
    stream: int             # unique per thread stream (version 3); (pid << 32 | tid) before
    packet_seq: int
    exec_first: int
    seg_insns: int
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
    reg_value: np.ndarray   # uint64 (format 2+; empty in format 1)
    reg_info: np.ndarray    # uint32
    version: int = F.FORMAT_VERSION
    counts: list = field(default_factory=list)  # per section as the header says (records or bytes)

    @property
    def thread(self) -> tuple[int, int]:
        return (self.pid, self.tid)

    @property
    def n_exec(self) -> int:
        """Execs of the packet, whether or not the heavy sections were decoded."""
        return self.counts[F.SEC_EXEC] if self.counts else len(self.exec)


_TRANSFORMED = (F.SEC_MEM_ADDR, F.SEC_MEM_VALUE, F.SEC_MEM_INFO, F.SEC_REG_VALUE, F.SEC_REG_INFO)
_EMPTY = {s: np.zeros(0, np.dtype("u1") if s in _TRANSFORMED else F.SECTION_DTYPES[s]) for s in range(F.NSECTIONS)}


# Most bytes of each encoded section in version 4 (a control byte, low info
# bits and a link step per record in the INFO sections; record_codec.c)
_ENCODED_LIMIT = {F.SEC_MEM_ADDR: 8 * F.CAP_MEM, F.SEC_MEM_VALUE: 8 * F.CAP_MEM, F.SEC_MEM_INFO: 7 * F.CAP_MEM,
                  F.SEC_REG_VALUE: 8 * F.CAP_REG, F.SEC_REG_INFO: 7 * F.CAP_REG}


def _counts_bytes(s: int, version: int) -> bool:
    """Whether section s's count is its length in bytes rather than records."""
    return s == F.SEC_MEM_VALUE or (version >= 4 and s in _ENCODED_LIMIT)


def section_bytes(s: int, count: int, version: int = F.FORMAT_VERSION) -> int:
    return count if _counts_bytes(s, version) else count * F.SECTION_DTYPES[s].itemsize


def _section_limit(s: int, version: int) -> int:
    if version >= 4 and s in _ENCODED_LIMIT:
        return _ENCODED_LIMIT[s]
    return F.CAP_MEM * 8 if s == F.SEC_MEM_VALUE else F.SECTION_CAPACITY[s]


@dataclass
class PacketView:
    """A packet's header and where its sections lie, before any section is decoded."""

    header: np.void
    counts: list[int]
    version: int
    where: dict  # section -> (buffer, byte offset); a missing section was not read

    def section(self, s: int) -> np.ndarray:
        """Section s as stored (before undoing the on-disk transforms); empty if not read."""
        if s not in self.where:
            return _EMPTY[s]
        buf, offset = self.where[s]
        dtype = np.dtype("u1") if s in _TRANSFORMED else F.SECTION_DTYPES[s]
        return np.frombuffer(buf, dtype, section_bytes(s, self.counts[s], self.version) // dtype.itemsize, offset)

    @property
    def n_mem(self) -> int:
        """Memory accesses of the packet, whether or not its heavy sections were read."""
        return int(self.header["n_mem"]) if self.version >= 4 else self.counts[F.SEC_MEM_ADDR]

    @property
    def n_regs(self) -> int:
        """Register records of the packet, likewise."""
        return int(self.header["n_regs"]) if self.version >= 4 else self.counts[F.SEC_REG_INFO]

    @property
    def stream(self) -> int:
        return stream_key(self.header, self.version)


def stream_key(header, version: int) -> int:
    """A thread stream's id: the plugin's (version 3) or (pid, tid) as one number."""
    if version >= 3:
        return int(header["stream"])
    return int(header["pid"]) << 32 | int(header["tid"])


def _check_header(buf, pos: int, chunk: str) -> tuple[np.void, int, list[int]]:
    if len(buf) - pos < 12:
        raise ChunkError(chunk, f"truncated packet header at byte {pos}")
    magic, version = bytes(buf[pos : pos + 8]), int.from_bytes(buf[pos + 8 : pos + 10], "little")
    if magic != F.PACKET_MAGIC:
        raise ChunkError(chunk, f"bad packet magic at byte {pos}")
    dtype = F.PACKET_HEADER_DTYPES.get(version)
    if dtype is None:
        raise ChunkError(chunk, f"packet format version {version}; this Cannoli DB reads versions "
                                f"{', '.join(map(str, F.READABLE_VERSIONS))}")
    if len(buf) - pos < dtype.itemsize:
        raise ChunkError(chunk, f"truncated packet header at byte {pos}")
    h = np.frombuffer(buf, dtype, 1, pos)[0]
    if int(h["header_size"]) != dtype.itemsize:
        raise ChunkError(chunk, f"packet header size {int(h['header_size'])}, version {version} has {dtype.itemsize}")
    # a version-1 packet is a version-2 one without registers
    counts = [int(c) for c in h["count"]] + [0] * (F.NSECTIONS - len(h["count"]))
    for s, count in enumerate(counts):
        if count > _section_limit(s, version):
            unit = "bytes of" if _counts_bytes(s, version) else "records in"
            raise ChunkError(chunk, f"packet claims {count} {unit} {F.SECTION_NAMES[s]} (limit {_section_limit(s, version)})")
    if version >= 4:
        for name, limit in (("n_mem", F.CAP_MEM), ("n_regs", F.CAP_REG)):
            if int(h[name]) > limit:
                raise ChunkError(chunk, f"packet claims {int(h[name])} {name[2:]} records (limit {limit})")
    else:
        if counts[F.SEC_MEM_ADDR] != counts[F.SEC_MEM_INFO]:
            raise ChunkError(chunk, "memory sections disagree on their length")
        if counts[F.SEC_REG_VALUE] != counts[F.SEC_REG_INFO]:
            raise ChunkError(chunk, "register sections disagree on their length")
    return h, version, counts


def _place(buf, pos: int, sections, counts: list[int], version: int, where: dict, chunk: str) -> int:
    """Record where each of `sections` lies from pos on; returns the end."""
    for s in sections:
        nbytes = section_bytes(s, counts[s], version)
        if pos + nbytes > len(buf):
            raise ChunkError(chunk, f"truncated {F.SECTION_NAMES[s]} section")
        where[s] = (buf, pos)
        pos += nbytes
    return pos


def view_packet(buf, pos: int, chunk: str = "?") -> tuple[PacketView, int]:
    """A whole packet at `pos` (the ring's and version 1-2 layout: header, then
    every section in order); returns the view and the end of the packet."""
    h, version, counts = _check_header(buf, pos, chunk)
    where: dict = {}
    end = _place(buf, pos + h.dtype.itemsize, range(F.NSECTIONS), counts, version, where, chunk)
    return PacketView(h, counts, version, where), end


def split_view(side, pos: int, heavy, heavy_pos: int, chunk: str = "?") -> tuple[PacketView, int, int]:
    """One version 3-4 packet: header and side sections at side[pos:], heavy
    sections at heavy[heavy_pos:] (heavy None: not read).  Returns the view and
    where the next packet starts in each buffer."""
    h, version, counts = _check_header(side, pos, chunk)
    if version < 3:
        raise ChunkError(chunk, f"a version-{version} packet in a two-frame chunk")
    where: dict = {}
    pos = _place(side, pos + h.dtype.itemsize, F.SIDE, counts, version, where, chunk)
    if heavy is not None:
        heavy_pos = _place(heavy, heavy_pos, F.HEAVY, counts, version, where, chunk)
    return PacketView(h, counts, version, where), pos, heavy_pos


def split_views(side, heavy, chunk: str = "?") -> list[PacketView]:
    """Views of a version 3-4 chunk's packets: headers and side sections in `side`,
    heavy sections in `heavy` (None: not read)."""
    views, pos, heavy_pos = [], 0, 0
    while pos < len(side):
        view, pos, heavy_pos = split_view(side, pos, heavy, heavy_pos, chunk)
        views.append(view)
    if heavy is not None and heavy_pos != len(heavy):
        raise ChunkError(chunk, f"heavy frame holds {len(heavy) - heavy_pos} bytes no packet claims")
    return views


def _unplane(raw: np.ndarray, n: int, dtype: str) -> np.ndarray:
    width = np.dtype(dtype).itemsize
    return np.ascontiguousarray(raw.reshape(width, n).T).view(dtype).reshape(n)


def _decode_values(raw: np.ndarray, info: np.ndarray, chunk: str) -> np.ndarray:
    shift = info & F.MEMINFO_SHIFT_MASK
    if np.any(shift > 3):
        raise ChunkError(chunk, "memory access wider than 8 bytes")
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


def _decode_registers(view: PacketView, chunk: str) -> tuple[np.ndarray, np.ndarray]:
    """REG_INFO and REG_VALUE with their on-disk transforms undone."""
    if view.version >= 4:
        if F.SEC_REG_INFO not in view.where:
            return np.zeros(0, np.uint32), np.zeros(0, np.uint64)
        try:
            value, info = record_codec.decode_regs(view.section(F.SEC_REG_VALUE), view.section(F.SEC_REG_INFO),
                                                   view.n_regs, view.section(F.SEC_EXEC))
        except record_codec.CodecError as exc:
            raise ChunkError(chunk, str(exc)) from None
        if np.any((info & F.REGINFO_NUMBER_MASK) >= F.MAX_REGS):
            raise ChunkError(chunk, f"register number beyond {F.MAX_REGS - 1}")
        return info, value
    return _decode_planed_registers(view, chunk)


def _decode_planed_registers(view: PacketView, chunk: str) -> tuple[np.ndarray, np.ndarray]:
    """Versions 1-3: each value is the running sum of its register's deltas in the packet."""
    n = len(view.section(F.SEC_REG_INFO)) // 4
    info = np.cumsum(_unplane(view.section(F.SEC_REG_INFO), n, "<u4"), dtype=np.uint32)
    deltas = _unplane(view.section(F.SEC_REG_VALUE), n, "<u8")
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
    if view.version < 3:
        # every record of versions 1-2 is a change, linked by bits 8..31
        link = info >> F.REGINFO_LINK_SHIFT
        info = (info & F.REGINFO_NUMBER_MASK) | (np.minimum(link, F.REGINFO_LINK_MASK) << F.REGINFO_LINK_SHIFT)
        info = info.astype(np.uint32) | np.uint32(F.REGINFO_CHANGED)
    return info, values


_NO_MEM = (np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint32))


def _decode_mem(view: PacketView, chunk: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Addresses, values and info words with the on-disk transforms undone."""
    if view.version >= 4:
        try:
            return record_codec.decode_mem(view.section(F.SEC_MEM_ADDR), view.section(F.SEC_MEM_VALUE),
                                           view.section(F.SEC_MEM_INFO), view.n_mem, view.section(F.SEC_EXEC))
        except record_codec.CodecError as exc:
            raise ChunkError(chunk, str(exc)) from None
    n = view.n_mem
    addr = np.cumsum(_unplane(view.section(F.SEC_MEM_ADDR), n, "<u8"), dtype=np.uint64)
    info = np.cumsum(_unplane(view.section(F.SEC_MEM_INFO), n, "<u4"), dtype=np.uint32)
    return addr, _decode_values(view.section(F.SEC_MEM_VALUE), info, chunk), info


def decode_packet(view: PacketView, chunk: str = "?", with_mem: bool = True) -> Packet:
    """The packet with its transforms undone.  with_mem=False leaves the memory
    sections empty; sections the view did not read (a heavy frame left out)
    come back empty too."""
    addr, value, info = _decode_mem(view, chunk) if with_mem and F.SEC_MEM_INFO in view.where else _NO_MEM
    reg_info, reg_value = _decode_registers(view, chunk)
    h = view.header
    return Packet(
        flags=int(h["flags"]),
        pid=int(h["pid"]),
        tid=int(h["tid"]),
        stream=view.stream,
        packet_seq=int(h["packet_seq"]),
        exec_first=int(h["exec_first"]),
        seg_insns=int(h["seg_insns"]),
        cur_done=bool(h["cur_done"]),
        cur_progress=int(h["cur_progress"]),
        cur_accessed=int(h["cur_accessed"]),
        exec=view.section(F.SEC_EXEC),
        mem_addr=addr,
        mem_value=value,
        mem_info=info,
        events=view.section(F.SEC_EVENT),
        blocks=view.section(F.SEC_BLOCK),
        insn_size=view.section(F.SEC_INSN_SIZE),
        insn_bytes=view.section(F.SEC_INSN_BYTES),
        blob=view.section(F.SEC_BLOB),
        reg_value=reg_value,
        reg_info=reg_info,
        version=view.version,
        counts=list(view.counts),
    )


def iter_views(buf, chunk: str = "?") -> Iterator[PacketView]:
    """Whole packets back to back (the ring's and version 1-2 frames)."""
    pos = 0
    while pos < len(buf):
        view, pos = view_packet(buf, pos, chunk)
        yield view


def parse_packets(raw: bytes | memoryview, chunk: str = "?", with_mem: bool = True) -> list[Packet]:
    """Split a version 1-2 frame (whole packets) into packets, validating each."""
    buf = memoryview(raw)
    return [decode_packet(view, chunk, with_mem) for view in iter_views(buf, chunk)]


# ---- chunk files ---------------------------------------------------------------

@dataclass
class Chunk:
    """One chunk file, checked, with its frames decompressed."""

    name: str
    header: np.void
    version: int
    side: bytes            # version 3: the side frame; versions 1-2: all packets
    heavy: bytes | None    # version 3: the heavy frame, or None (not read, or in the store)
    heavy_in_store: bool

    @property
    def seq(self) -> int:
        return int(self.header["chunk_seq"])

    def views(self) -> list[PacketView]:
        if self.version >= 3:
            return split_views(memoryview(self.side), None if self.heavy is None else memoryview(self.heavy),
                               self.name)
        return list(iter_views(memoryview(self.side), self.name))

    def packets(self, with_mem: bool = True) -> list[Packet]:
        views = self.views()
        if len(views) != int(self.header["n_packets"]):
            raise ChunkError(self.name, f"holds {len(views)} packets, header says {int(self.header['n_packets'])}")
        return [decode_packet(v, self.name, with_mem) for v in views]


def _header_dtype(data: bytes, chunk: str) -> np.dtype:
    if len(data) < 12:
        raise ChunkError(chunk, f"truncated: {len(data)} bytes, shorter than a chunk header")
    if data[:8] != F.CHUNK_MAGIC:
        raise ChunkError(chunk, "not a Cannoli DB chunk (bad magic)")
    version = int.from_bytes(data[8:10], "little")
    if version not in F.READABLE_VERSIONS:
        raise ChunkError(chunk, f"format version {version}; this Cannoli DB reads versions "
                                f"{', '.join(map(str, F.READABLE_VERSIONS))}")
    return F.CHUNK_HEADER_DTYPE if version >= 3 else F.CHUNK_HEADER_DTYPE_V2


def read_chunk_header(data: bytes, chunk: str) -> np.void:
    dtype = _header_dtype(data, chunk)
    hsize = dtype.itemsize
    if len(data) < hsize:
        raise ChunkError(chunk, f"truncated: {len(data)} bytes, shorter than the {hsize}-byte header")
    h = np.frombuffer(data, dtype, 1)[0]
    if int(h["header_size"]) != hsize:
        raise ChunkError(chunk, "header size does not match the format version")
    check = bytearray(data[:hsize])
    crc_at = dtype.fields["header_crc32"][1]
    check[crc_at : crc_at + 4] = bytes(4)
    if zlib.crc32(check) != int(h["header_crc32"]):
        raise ChunkError(chunk, "header checksum mismatch (damaged header)")
    return h


def _frame(data, start: int, size: int, raw_size: int, crc: int, chunk: str, what: str) -> bytes:
    """Check and decompress one zstd frame of a chunk."""
    if raw_size > F.MAX_CHUNK_RAW:
        raise ChunkError(chunk, f"claims {raw_size} bytes of {what} content (limit {F.MAX_CHUNK_RAW})")
    payload = memoryview(data)[start : start + size]
    if zlib.crc32(payload) != crc:
        raise ChunkError(chunk, f"{what} checksum mismatch (damaged data)")
    try:
        raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw_size)
    except zstandard.ZstdError as exc:
        raise ChunkError(chunk, f"cannot decompress the {what}: {exc}") from None
    if len(raw) != raw_size:
        raise ChunkError(chunk, f"{what} decompressed to {len(raw)} bytes, header says {raw_size}")
    return raw


def read_chunk(data: bytes, chunk: str = "?", heavy: bool = True) -> Chunk:
    """Validate a chunk file's bytes and decompress its frames (heavy=False: the
    side frame only, where the chunk has one; the heavy frame's checksum is
    still checked, so damage anywhere is found here)."""
    h = read_chunk_header(data, chunk)
    version, hsize = int(h["version"]), h.dtype.itemsize
    if version < 3:
        payload_size = int(h["payload_size"])
        if len(data) != hsize + payload_size:
            raise ChunkError(chunk, f"truncated or padded: {len(data) - hsize} payload bytes, header says {payload_size}")
        raw = _frame(data, hsize, payload_size, int(h["raw_size"]), int(h["payload_crc32"]), chunk, "payload")
        return Chunk(chunk, h, version, raw, None, False)
    side_size, heavy_size = int(h["side_size"]), int(h["heavy_size"])
    in_store = bool(int(h["flags"]) & F.CHUNK_HEAVY_IN_STORE)
    if len(data) != hsize + side_size + heavy_size:
        raise ChunkError(chunk, f"truncated or padded: {len(data) - hsize} bytes after the header, "
                                f"header says {side_size + heavy_size}")
    if in_store and heavy_size:
        raise ChunkError(chunk, "says its heavy sections are in the store but still holds them")
    side = _frame(data, hsize, side_size, int(h["side_raw"]), int(h["side_crc32"]), chunk, "side frame")
    heavy_raw = None
    if heavy and not in_store:
        heavy_raw = _frame(data, hsize + side_size, heavy_size, int(h["heavy_raw"]), int(h["heavy_crc32"]), chunk,
                           "heavy frame")
    elif not in_store and zlib.crc32(memoryview(data)[hsize + side_size:]) != int(h["heavy_crc32"]):
        raise ChunkError(chunk, "heavy frame checksum mismatch (damaged data)")
    return Chunk(chunk, h, version, side, heavy_raw, in_store)


def decode_chunk_bytes(data: bytes, chunk: str = "?", with_mem: bool = True) -> list[Packet]:
    """Validate and decode one chunk file's bytes."""
    return read_chunk(data, chunk).packets(with_mem)


def read_chunk_file(path: Path, heavy: bool = True) -> Chunk:
    return read_chunk(path.read_bytes(), path.name, heavy)


def decode_chunk_file(path: Path, with_mem: bool = True) -> list[Packet]:
    return read_chunk_file(path).packets(with_mem)


def chunk_files(trace_dir: Path) -> list[Path]:
    """The trace's chunk files in sequence order (temporary files are not chunks)."""
    return sorted(p for p in (Path(trace_dir) / tracedir.CHUNKS_NAME).glob("*.zst") if p.stem.isdigit())


def iter_packets(trace_dir: Path) -> Iterator[Packet]:
    for path in chunk_files(trace_dir):
        yield from decode_chunk_file(path)
