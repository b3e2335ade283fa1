"""Compressing packets into chunk files, off the recorder's draining thread.

The ring packs each packet straight into a batch: its header and side sections
into the batch's side buffer, its heavy sections into the heavy buffer (no copy
per packet); buffers are recycled so the recorder does not fault in fresh
memory for every chunk.  A batch becomes a chunk of about `target_raw` bytes:
a worker thread compresses the two buffers as the chunk's side and heavy zstd
frames (zstandard releases the GIL, so workers run in parallel with the drain
loop and with QEMU), writes them to a temporary name, fsyncs and renames, so a
crash at any moment leaves only whole chunks.  At most `max_pending` chunks
wait for a worker: past that the drain loop blocks, the ring fills and the
guest waits -- backpressure, never loss.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zstandard

from cannoli_db import format as F
from cannoli_db import tracedir
from cannoli_db.chunkfile import chunk_header


SIDE_SHARE = 4  # the side buffer holds a quarter of a chunk's target


class ChunkWriter:
    def __init__(self, chunks_dir: Path, side_room: int, heavy_room: int, level: int = 1, workers: int = 2,
                 target_raw: int = 32 << 20, max_pending: int = 2):
        self.dir = chunks_dir
        self.level = level
        self.target_raw = target_raw
        self.max_pending = max_pending
        self.side_room, self.heavy_room = side_room, heavy_room
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cannoli-zstd")
        self._pending: deque[Future] = deque()
        self._free: list[tuple[bytearray, bytearray]] = []
        self._side, self._heavy = self._new_buffers()
        self._side_used = self._heavy_used = 0
        self._totals = np.zeros(3, np.int64)  # exec, mem, event records of the batch
        self._packets = 0
        self.next_seq = 0
        self.chunks_started = 0     # batches handed to a worker
        self.bytes_written = 0
        self.raw_bytes = 0
        self.chunks = 0

    def _new_buffers(self) -> tuple[bytearray, bytearray]:
        # side sections are a small share of the bytes: a batch is flushed when
        # either buffer is past its target
        if self._free:
            return self._free.pop()
        return bytearray(self.target_raw // SIDE_SHARE + self.side_room), bytearray(self.target_raw + self.heavy_room)

    def room(self) -> tuple:
        """Where the next packet goes: (side buffer, offset, heavy buffer, offset),
        with room for the largest packet in each."""
        return self._side, self._side_used, self._heavy, self._heavy_used

    def commit(self, side: int, heavy: int, view) -> None:
        """The packet written at room() is `side` + `heavy` bytes (0: nothing was
        written); view is its decode.PacketView."""
        if not side:
            return
        self._side_used += side
        self._heavy_used += heavy
        self._packets += 1
        self._totals += (view.counts[F.SEC_EXEC], view.n_mem, view.counts[F.SEC_EVENT])
        if self._heavy_used >= self.target_raw or self._side_used >= self.target_raw // SIDE_SHARE:
            self.flush()

    def flush(self) -> None:
        if not self._packets:
            return
        batch = (self._side, self._side_used, self._heavy, self._heavy_used, self._packets, self._totals.copy())
        self._side, self._heavy = self._new_buffers()
        self._side_used = self._heavy_used = self._packets = 0
        self._totals[:] = 0
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        self.chunks_started += 1
        self._pending.append(self._pool.submit(self._write_chunk, seq, *batch))
        while len(self._pending) > self.max_pending:
            self._collect(self._pending.popleft())

    def _collect(self, future: Future) -> None:
        written, raw, buffers = future.result()
        self._free.append(buffers)
        self.bytes_written += written
        self.raw_bytes += raw
        self.chunks += 1

    def close(self, drop_batch: bool = False) -> None:
        """Write what is batched (unless drop_batch) and wait for every chunk;
        re-raises a worker's error."""
        try:
            if not drop_batch:
                self.flush()
            while self._pending:
                self._collect(self._pending.popleft())
        finally:
            self._pool.shutdown(wait=True)
        tracedir.fsync_dir(self.dir)

    def _write_chunk(self, seq: int, side: bytearray, side_used: int, heavy: bytearray, heavy_used: int,
                     n_packets: int, totals: np.ndarray):
        compressor = zstandard.ZstdCompressor(level=self.level, write_checksum=True)
        side_frame = compressor.compress(memoryview(side)[:side_used])
        heavy_frame = compressor.compress(memoryview(heavy)[:heavy_used])
        header = chunk_header(seq, n_packets, side_frame, side_used, heavy_frame, heavy_used, 0, totals)
        tracedir.write_atomically(self.dir / tracedir.chunk_name(seq), (header, side_frame, heavy_frame))
        return len(header) + len(side_frame) + len(heavy_frame), side_used + heavy_used, (side, heavy)
