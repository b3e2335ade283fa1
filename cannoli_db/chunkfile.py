"""Writing chunk files (their format: qemu_patches/cannoli_format.h; reading
them: decode.py): the header of a version-3 chunk, and dropping a chunk's
heavy frame once the store holds its rows."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from . import format as F
from . import tracedir
from .decode import Chunk


def chunk_header(seq: int, n_packets: int, side_frame: bytes, side_raw: int, heavy_frame: bytes, heavy_raw: int,
                 flags: int, totals) -> bytes:
    """A version-3 chunk header (cannoli_format.h) for the two frames."""
    header = np.zeros(1, F.CHUNK_HEADER_DTYPE)
    header["magic"] = F.CHUNK_MAGIC
    header["version"] = F.FORMAT_VERSION
    header["header_size"] = F.CHUNK_HEADER_DTYPE.itemsize
    header["n_packets"] = n_packets
    header["chunk_seq"] = seq
    header["side_size"], header["side_raw"] = len(side_frame), side_raw
    header["heavy_size"], header["heavy_raw"] = len(heavy_frame), heavy_raw
    header["side_crc32"] = zlib.crc32(side_frame)
    header["heavy_crc32"] = zlib.crc32(heavy_frame) if heavy_frame else 0
    header["flags"] = flags
    header["n_exec"], header["n_mem"], header["n_event"] = (int(x) for x in totals)
    header["header_crc32"] = zlib.crc32(header.tobytes())
    return header.tobytes()


def drop_heavy(path: Path, chunk: Chunk) -> int:
    """Rewrite a version-3 chunk without its heavy frame (its rows are in the
    store's parts, which must be durable already): the side frame and the
    header as they were, with CN_CHUNK_HEAVY_IN_STORE.  Returns the bytes freed."""
    h = chunk.header
    data = path.read_bytes()
    hsize = F.CHUNK_HEADER_DTYPE.itemsize
    side_frame = data[hsize: hsize + int(h["side_size"])]
    header = np.frombuffer(data[:hsize], F.CHUNK_HEADER_DTYPE).copy()
    header["heavy_size"] = 0
    header["flags"] = int(h["flags"]) | F.CHUNK_HEAVY_IN_STORE
    header["header_crc32"] = 0
    header["header_crc32"] = zlib.crc32(header.tobytes())
    tracedir.write_atomically(path, (header.tobytes(), side_frame))
    return len(data) - hsize - len(side_frame)
