"""A version-4 packet's memory sections, decoded (and, for tests and tools,
encoded) by the C codec the recorder packs with (qemu_patches/mem_codec.c,
exported by the consumer library): one implementation of the rule, whichever
side runs it."""

from __future__ import annotations

import threading

import cffi
import numpy as np

from .. import format as F
from .. import native

_ffi = cffi.FFI()
_ffi.cdef("""
size_t cn_mem_scratch_size(void);
size_t cn_mem_max_encoded(uint32_t n);
size_t cn_mem_encode(const uint64_t *addr, const uint64_t *value, const uint32_t *info, uint32_t n,
                     const uint32_t *exec, uint32_t n_exec, char *out, void *scratch, size_t size[3]);
int cn_mem_decode(const uint8_t *addr_in, size_t addr_size, const uint8_t *value_in, size_t value_size,
                  const uint8_t *info_in, size_t info_size, uint32_t n, const uint32_t *exec, uint32_t n_exec,
                  uint64_t *addr, uint64_t *value, uint32_t *info, void *scratch);
""")
_lib = None
_scratch = threading.local()  # a decoder's slots and staging: one per thread (the index decodes in several)

# cn_mem_decode's error codes (mem_codec.c), as a reader says them
ERRORS = {
    1: "memory sections shorter than their accesses need",
    2: "memory sections hold bytes no access claims",
    3: "memory access wider than 8 bytes, or a value wider than its access",
    4: "memory access info out of range",
}


class MemCodecError(ValueError):
    pass


def _library():
    global _lib
    if _lib is None:
        _lib = _ffi.dlopen(str(native.consumer_path()))
    return _lib


def _decoder_scratch():
    if getattr(_scratch, "buf", None) is None:
        _scratch.buf = _ffi.new("char[]", _library().cn_mem_scratch_size())
    return _scratch.buf


def _ptr(array: np.ndarray, ctype: str):
    return _ffi.cast(ctype, _ffi.from_buffer(array)) if len(array) else _ffi.NULL


def decode(addr_bytes: np.ndarray, value_bytes: np.ndarray, info_bytes: np.ndarray, n: int,
           exec_: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(addresses, values, info words) of n accesses from the three sections'
    bytes and the packet's EXEC section; MemCodecError if the bytes are not a
    valid encoding."""
    if n > F.CAP_MEM:
        raise MemCodecError(f"packet claims {n} memory accesses (limit {F.CAP_MEM})")
    addr, value, info = np.empty(n, np.uint64), np.empty(n, np.uint64), np.empty(n, np.uint32)
    exec_ = np.ascontiguousarray(exec_, np.uint32)
    err = _library().cn_mem_decode(
        _ptr(addr_bytes, "uint8_t *"), len(addr_bytes), _ptr(value_bytes, "uint8_t *"), len(value_bytes),
        _ptr(info_bytes, "uint8_t *"), len(info_bytes), n, _ptr(exec_, "uint32_t *"), len(exec_),
        _ptr(addr, "uint64_t *"), _ptr(value, "uint64_t *"), _ptr(info, "uint32_t *"), _decoder_scratch())
    if err:
        raise MemCodecError(ERRORS.get(err, f"memory sections undecodable (error {err})"))
    return addr, value, info


def encode(addr: np.ndarray, value: np.ndarray, info: np.ndarray, exec_: np.ndarray) -> tuple[bytes, bytes, bytes]:
    """The MEM_ADDR, MEM_VALUE and MEM_INFO sections of these accesses, as the recorder writes them."""
    lib = _library()
    n = len(addr)
    if n > F.CAP_MEM:
        raise ValueError(f"at most {F.CAP_MEM} accesses per packet")
    addr, value = np.ascontiguousarray(addr, np.uint64), np.ascontiguousarray(value, np.uint64)
    info, exec_ = np.ascontiguousarray(info, np.uint32), np.ascontiguousarray(exec_, np.uint32)
    out = bytearray(lib.cn_mem_max_encoded(n) + 1)
    scratch = _ffi.new("char[]", lib.cn_mem_scratch_size())
    size = _ffi.new("size_t[3]")
    lib.cn_mem_encode(_ptr(addr, "uint64_t *"), _ptr(value, "uint64_t *"), _ptr(info, "uint32_t *"), n,
                      _ptr(exec_, "uint32_t *"), len(exec_), _ffi.from_buffer(out), scratch, size)
    a, v, i = size[0], size[1], size[2]
    return bytes(out[:a]), bytes(out[a:a + v]), bytes(out[a + v:a + v + i])
