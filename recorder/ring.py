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

_CDEF = """
size_t cn_consumer_ring_size(uint32_t n_lanes);
size_t cn_consumer_max_part_size(int side);
size_t cn_consumer_scratch_size(void);
int cn_consumer_init(void *mem, size_t size, uint32_t n_lanes, uint32_t recorder_pid);
uint32_t cn_consumer_lane_state(void *mem, uint32_t lane);
int cn_consumer_next_full(void *mem, uint32_t start);
size_t cn_consumer_pack(void *mem, uint32_t lane, void *side, size_t side_cap, void *heavy, size_t heavy_cap,
                        uint32_t extra_flags, void *scratch, size_t *heavy_used);
void cn_consumer_release(void *mem, uint32_t lane);
void cn_consumer_stop(void *mem);
"""


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
        self.max_side = lib.cn_consumer_max_part_size(1)
        self.max_heavy = lib.cn_consumer_max_part_size(0)
        self._scratch = _ffi.new("char[]", lib.cn_consumer_scratch_size())
        self._heavy_used = _ffi.new("size_t *")
        self._next = 0

    def header_bytes(self, offset: int, length: int) -> bytes:
        return bytes(self._map[offset : offset + length])

    def take_full(self, room: "Room") -> tuple[int, int]:
        """Pack the next published lane into `room` as one packet and hand the
        lane back; returns (side bytes, heavy bytes), (0, 0) if none was ready."""
        lane = _library().cn_consumer_next_full(self._mem, self._next)
        if lane < 0:
            return 0, 0
        self._next = (lane + 1) % self.n_lanes
        return self._take(lane, 0, room)

    def _take(self, lane: int, flags: int, room: "Room") -> tuple[int, int]:
        lib = _library()
        side, side_at, heavy, heavy_at = room
        if len(side) - side_at < self.max_side or len(heavy) - heavy_at < self.max_heavy:
            raise ValueError("packet buffers too small")
        size = lib.cn_consumer_pack(self._mem, lane, _ffi.from_buffer(side) + side_at, len(side) - side_at,
                                    _ffi.from_buffer(heavy) + heavy_at, len(heavy) - heavy_at, flags,
                                    self._scratch, self._heavy_used)
        lib.cn_consumer_release(self._mem, lane)
        return (size, self._heavy_used[0]) if size else (0, 0)

    def salvage(self, room_for) -> None:
        """After QEMU is gone: pack every lane still holding records.  room_for()
        returns (room, commit): where one packet goes, and a callable that takes
        the packed sizes."""
        for lane in range(self.n_lanes):
            state = _library().cn_consumer_lane_state(self._mem, lane)
            if state == F.LANE_FREE:
                continue
            room, commit = room_for()
            commit(*self._take(lane, F.PACKET_SALVAGED if state == F.LANE_OWNED else 0, room))

    def stop_producers(self) -> None:
        _library().cn_consumer_stop(self._mem)

    def close(self) -> None:
        del self._mem
        self._map.close()
        os.close(self.fd)


def ring_header(ring: Ring) -> dict:
    dtype = F.RING_HEADER_DTYPE
    h = np.frombuffer(ring.header_bytes(0, dtype.itemsize), dtype)[0]
    return {name: (h[name].item() if h[name].ndim == 0 else h[name].tolist()) for name in dtype.names}


# Where one packet goes: (side buffer, offset, heavy buffer, offset)
Room = tuple
