"""Compressing packets into chunk files, off the recorder's draining thread.

Packets are packed by the ring straight into a batch buffer (no copy per
packet); buffers are recycled so the recorder does not fault in fresh memory
for every chunk.  Batches become chunks of about `target_raw` bytes; each is
compressed by a worker thread (zstandard releases the GIL, so workers run in
parallel with the drain loop and with QEMU), written to a temporary name,
fsynced and renamed, so a crash at any moment leaves only whole chunks.  At
most `max_pending` chunks wait for a worker: past that the drain loop blocks,
the ring fills and the guest waits -- backpressure, never loss.
"""

from __future__ import annotations

import os
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zstandard

from cannoli_db import format as F
from cannoli_db.decode import view_packet


def chunk_name(seq: int) -> str:
    return f"{seq:06d}.zst"


class ChunkWriter:
    def __init__(self, chunks_dir: Path, packet_room: int, level: int = 1, workers: int = 2,
                 target_raw: int = 8 << 20, max_pending: int = 3):
        self.dir = chunks_dir
        self.level = level
        self.target_raw = target_raw
        self.max_pending = max_pending
        self.packet_room = packet_room
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cannoli-zstd")
        self._pending: deque[Future] = deque()
        self._free: list[bytearray] = []
        self._buf = self._new_buffer()
        self._packets: list[tuple[int, int]] = []  # (offset, size) in _buf
        self._used = 0
        self.next_seq = 0
        self.bytes_written = 0
        self.raw_bytes = 0
        self.chunks = 0

    def _new_buffer(self) -> bytearray:
        return self._free.pop() if self._free else bytearray(self.target_raw + self.packet_room)

    def room(self) -> tuple[bytearray, int]:
        """Where the next packet goes: a buffer and offset with packet_room bytes free."""
        return self._buf, self._used

    def commit(self, size: int) -> None:
        """The packet written at room() is `size` bytes long (0: nothing was written)."""
        if not size:
            return
        self._packets.append((self._used, size))
        self._used += size
        if self._used >= self.target_raw:
            self.flush()

    def flush(self) -> None:
        if not self._packets:
            return
        buf, packets = self._buf, self._packets
        self._buf, self._packets, self._used = self._new_buffer(), [], 0
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        self._pending.append(self._pool.submit(self._write_chunk, seq, buf, packets))
        while len(self._pending) > self.max_pending:
            self._collect(self._pending.popleft())

    def _collect(self, future: Future) -> None:
        written, raw, buf = future.result()
        self._free.append(buf)
        self.bytes_written += written
        self.raw_bytes += raw
        self.chunks += 1

    def close(self) -> None:
        """Write what is batched and wait for every chunk; re-raises a worker's error."""
        try:
            self.flush()
            while self._pending:
                self._collect(self._pending.popleft())
        finally:
            self._pool.shutdown(wait=True)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_chunk(self, seq: int, buf: bytearray, packets: list[tuple[int, int]]):
        raw = memoryview(buf)[: packets[-1][0] + packets[-1][1]]
        raw_size = len(raw)
        payload = zstandard.ZstdCompressor(level=self.level, write_checksum=True).compress(raw)
        header = np.zeros(1, F.CHUNK_HEADER_DTYPE)
        header["magic"] = F.CHUNK_MAGIC
        header["version"] = F.FORMAT_VERSION
        header["header_size"] = F.CHUNK_HEADER_DTYPE.itemsize
        header["n_packets"] = len(packets)
        header["chunk_seq"] = seq
        header["payload_size"] = len(payload)
        header["raw_size"] = raw_size
        header["payload_crc32"] = zlib.crc32(payload)
        totals = _packet_totals(raw, packets)
        header["n_exec"], header["n_mem"], header["n_event"] = totals
        header["header_crc32"] = zlib.crc32(header.tobytes())
        data = header.tobytes() + payload
        final = self.dir / chunk_name(seq)
        tmp = self.dir / f".{final.name}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, final)
        except OSError:
            tmp.unlink(missing_ok=True)  # never leave a partial chunk, even on a full disk
            raise
        return len(data), raw_size, buf


def _packet_totals(raw, packets: list[tuple[int, int]]) -> tuple[int, int, int]:
    n_exec = n_mem = n_event = 0
    for offset, _ in packets:
        counts = view_packet(raw, offset).counts
        n_exec += int(counts[F.SEC_EXEC])
        n_mem += int(counts[F.SEC_MEM_ADDR])
        n_event += int(counts[F.SEC_EVENT])
    return n_exec, n_mem, n_event
