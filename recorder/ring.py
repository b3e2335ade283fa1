"""The recorder's handle on the shared-memory ring (qemu_patches/cannoli_ring.h).

The ring lives in a memfd: QEMU inherits the descriptor, the plugin maps it and
closes it, and the kernel frees the memory when both processes are gone, so no
named segment can be left behind by a crash.  Atomics and packing are done in C
(qemu_patches/ring_consumer.c, loaded with cffi)."""

from __future__ import annotations

import mmap
import os

import cffi
import numpy as np

from cannoli_db import format as F
from cannoli_db import native
from cannoli_db.decode import view_packet

_CDEF = """
size_t cn_consumer_ring_size(uint32_t n_lanes);
size_t cn_consumer_max_packet_size(void);
int cn_consumer_init(void *mem, size_t size, uint32_t n_lanes, uint32_t recorder_pid);
uint32_t cn_consumer_lane_state(void *mem, uint32_t lane);
int cn_consumer_next_full(void *mem, uint32_t start);
size_t cn_consumer_pack(void *mem, uint32_t lane, void *out, size_t cap, uint32_t extra_flags,
                        void *scratch, uint64_t *hist, uint32_t hist_len, uint32_t *max_id);
void cn_consumer_release(void *mem, uint32_t lane);
void cn_consumer_stop(void *mem);
"""

LANE_FREE, LANE_OWNED, LANE_FULL = 0, 1, 2
CAP_MEM = F.CAP_MEM

_ffi = cffi.FFI()
_ffi.cdef(_CDEF)
_lib = None


def _library():
    global _lib
    if _lib is None:
        _lib = _ffi.dlopen(str(native.consumer_path()))
    return _lib


class Ring:
    def __init__(self, n_lanes: int = 32):
        lib = _library()
        self.n_lanes = n_lanes
        self.size = lib.cn_consumer_ring_size(n_lanes)
        self.fd = os.memfd_create("cannoli-ring", 0)
        os.ftruncate(self.fd, self.size)
        self._map = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._mem = _ffi.from_buffer(self._map)
        if lib.cn_consumer_init(self._mem, self.size, n_lanes, os.getpid()) != 0:
            raise RuntimeError("ring initialisation failed")
        self.max_packet_size = lib.cn_consumer_max_packet_size()
        self._scratch = _ffi.new("uint64_t[]", CAP_MEM)
        self._max_id = _ffi.new("uint32_t *")
        self.exec_hist = np.zeros(1 << 16, np.uint64)
        self._next = 0

    def header_bytes(self, offset: int, length: int) -> bytes:
        return bytes(self._map[offset : offset + length])

    def take_full(self, out: bytearray, offset: int) -> int:
        """Pack the next published lane into out[offset:] as one packet and hand
        the lane back; returns the packet's size (0 if none was ready)."""
        lane = _library().cn_consumer_next_full(self._mem, self._next)
        if lane < 0:
            return 0
        self._next = (lane + 1) % self.n_lanes
        return self._take(lane, 0, out, offset)

    def _take(self, lane: int, flags: int, out: bytearray, offset: int) -> int:
        lib = _library()
        if len(out) - offset < self.max_packet_size:
            raise ValueError("packet buffer too small")
        hist = self.exec_hist
        dest = _ffi.from_buffer(out)
        size = lib.cn_consumer_pack(self._mem, lane, dest + offset, len(out) - offset, flags, self._scratch,
                                    _ffi.cast("uint64_t *", hist.ctypes.data), len(hist), self._max_id)
        lib.cn_consumer_release(self._mem, lane)
        if size and self._max_id[0] >= len(hist):
            self._recount(memoryview(out)[offset : offset + size], len(hist))
        return size

    def _recount(self, packet, counted_below: int) -> None:
        """Block ids beyond the histogram: grow it and count this packet's rest."""
        ids = view_packet(packet, 0).section(packet, F.SEC_EXEC)
        grown = max(int(ids.max()) + 1, 2 * len(self.exec_hist))
        self.exec_hist = np.pad(self.exec_hist, (0, grown - len(self.exec_hist)))
        late = ids[ids >= counted_below]
        self.exec_hist += np.bincount(late, minlength=len(self.exec_hist)).astype(np.uint64)

    def salvage(self, out_for) -> None:
        """After QEMU is gone: pack every lane still holding records.  out_for()
        returns (buffer, offset, commit): room for one packet, and a callable
        that takes the packed size."""
        for lane in range(self.n_lanes):
            state = _library().cn_consumer_lane_state(self._mem, lane)
            if state == LANE_FREE:
                continue
            out, offset, commit = out_for()
            commit(self._take(lane, F.PACKET_SALVAGED if state == LANE_OWNED else 0, out, offset))

    def stop_producers(self) -> None:
        _library().cn_consumer_stop(self._mem)

    def close(self) -> None:
        del self._mem
        self._map.close()
        os.close(self.fd)


# struct cn_ring_header (qemu_patches/cannoli_ring.h); tests/test_format.py checks it.
RING_HEADER_DTYPE = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u4"),
        ("format_version", "<u4"),
        ("n_lanes", "<u4"),
        ("recorder_pid", "<u4"),
        ("lane_stride", "<u8"),
        ("seq", "<u8"),
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
        ("reserved", "<u8", (4,)),
    ]
)


def ring_header(ring: Ring) -> dict:
    h = np.frombuffer(ring.header_bytes(0, RING_HEADER_DTYPE.itemsize), RING_HEADER_DTYPE)[0]
    return {name: (h[name].item() if h[name].ndim == 0 else h[name].tolist()) for name in RING_HEADER_DTYPE.names}
