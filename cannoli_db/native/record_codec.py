"""A version-4 packet's heavy records -- memory accesses and register records --
decoded (and, for tests and tools, encoded) by the C codec the recorder packs
with (qemu_patches/record_codec.c, exported by the consumer library): one
implementation of the rule, whichever side runs it."""

from __future__ import annotations

import threading
from importlib import resources

import cffi
import numpy as np

from .. import format as F
from .. import native

def _declarations() -> str:
    """The codec's C declarations, from its header (the preprocessor lines cffi does not take left out)."""
    header = resources.files("cannoli_db.qemu_patches").joinpath("record_codec.h").read_text()
    return "\n".join(line for line in header.splitlines() if not line.startswith("#"))


_ffi = cffi.FFI()
_ffi.cdef(_declarations())
_lib = None
_scratch = threading.local()  # a decoder's slots and staging: one per thread (the index decodes in several)

# the decoders' errors (record_codec.h), as a reader says them
ERRORS = {
    "CN_MEM_SHORT": "sections shorter than their records need",
    "CN_MEM_LONG": "sections hold bytes no record claims",
    "CN_MEM_WIDE": "a memory access wider than 8 bytes, or a value wider than its access",
    "CN_MEM_BAD_INFO": "record info out of range",
}


class CodecError(ValueError):
    pass


def _library():
    global _lib
    if _lib is None:
        _lib = _ffi.dlopen(str(native.consumer_path()))
    return _lib


def _decoder_scratch():
    if getattr(_scratch, "buf", None) is None:
        _scratch.buf = _ffi.new("char[]", _library().cn_codec_scratch_size())
    return _scratch.buf


def _ptr(array: np.ndarray | None, ctype: str):
    return _ffi.cast(ctype, _ffi.from_buffer(array)) if array is not None and len(array) else _ffi.NULL


def _check(n: int, what: str) -> None:
    if n > F.CAP_MEM:  # = CAP_REG
        raise CodecError(f"packet claims {n} {what} (limit {F.CAP_MEM})")


def _fail(err: int, what: str) -> None:
    if err:
        reason = next((text for name, text in ERRORS.items() if getattr(_library(), name) == err),
                      f"undecodable (error {err})")
        raise CodecError(f"{what}: {reason}")


def decode_mem(addr_bytes: np.ndarray, value_bytes: np.ndarray, info_bytes: np.ndarray, n: int,
               exec_: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(addresses, values, info words) of n accesses from the three MEM_
    sections' bytes and the packet's EXEC section; CodecError if the bytes are
    not a valid encoding."""
    _check(n, "memory accesses")
    addr, value, info = np.empty(n, np.uint64), np.empty(n, np.uint64), np.empty(n, np.uint32)
    exec_ = np.ascontiguousarray(exec_, np.uint32)
    err = _library().cn_mem_decode(
        _ptr(addr_bytes, "uint8_t *"), len(addr_bytes), _ptr(value_bytes, "uint8_t *"), len(value_bytes),
        _ptr(info_bytes, "uint8_t *"), len(info_bytes), n, _ptr(exec_, "uint32_t *"), len(exec_),
        _ptr(addr, "uint64_t *"), _ptr(value, "uint64_t *"), _ptr(info, "uint32_t *"), _decoder_scratch())
    _fail(err, "memory sections")
    return addr, value, info


def decode_regs(value_bytes: np.ndarray, info_bytes: np.ndarray, n: int,
                exec_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, info words) of n register records from REG_VALUE and REG_INFO."""
    _check(n, "register records")
    value, info = np.empty(n, np.uint64), np.empty(n, np.uint32)
    exec_ = np.ascontiguousarray(exec_, np.uint32)
    err = _library().cn_reg_decode(
        _ptr(value_bytes, "uint8_t *"), len(value_bytes), _ptr(info_bytes, "uint8_t *"), len(info_bytes), n,
        _ptr(exec_, "uint32_t *"), len(exec_), _ptr(value, "uint64_t *"), _ptr(info, "uint32_t *"),
        _decoder_scratch())
    _fail(err, "register sections")
    return value, info


def _encode(which: str, arrays: list[np.ndarray], exec_: np.ndarray, n_sections: int) -> list[bytes]:
    lib = _library()
    n = len(arrays[-1])
    if n > F.CAP_MEM:
        raise ValueError(f"at most {F.CAP_MEM} records per packet")
    out = bytearray(getattr(lib, f"cn_{which}_max_encoded")(n) + 1)
    scratch = _ffi.new("char[]", lib.cn_codec_scratch_size())
    size = _ffi.new(f"size_t[{n_sections}]")
    pointers = [_ptr(a, "uint32_t *" if a.dtype == np.uint32 else "uint64_t *") for a in arrays]
    exec_ = np.ascontiguousarray(exec_, np.uint32)
    getattr(lib, f"cn_{which}_encode")(*pointers, n, _ptr(exec_, "uint32_t *"), len(exec_), _ffi.from_buffer(out),
                                       scratch, size)
    sections, at = [], 0
    for k in range(n_sections):
        sections.append(bytes(out[at:at + size[k]]))
        at += size[k]
    return sections


def encode_mem(addr: np.ndarray, value: np.ndarray, info: np.ndarray, exec_: np.ndarray) -> list[bytes]:
    """The MEM_ADDR, MEM_VALUE and MEM_INFO sections of these accesses, as the recorder writes them."""
    return _encode("mem", [np.ascontiguousarray(addr, np.uint64), np.ascontiguousarray(value, np.uint64),
                           np.ascontiguousarray(info, np.uint32)], exec_, 3)


def encode_regs(value: np.ndarray, info: np.ndarray, exec_: np.ndarray) -> list[bytes]:
    """The REG_VALUE and REG_INFO sections of these register records."""
    return _encode("reg", [np.ascontiguousarray(value, np.uint64), np.ascontiguousarray(info, np.uint32)], exec_, 2)
