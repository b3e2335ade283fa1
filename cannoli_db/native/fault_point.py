"""Where a signal stopped a block, for a thread that died inside it.

QEMU 7.2 runs no plugin callback when a fatal signal ends the process, so the
plugin cannot resolve the dying thread's last block; its packet says how far
the block got (`cur_accessed`, cannoli_format.h) and this module finishes the
job with the same C code the plugin uses (qemu_patches/fault_point.c, exported
by the recorder's consumer library): the faulting instruction is the first one
at or after `cur_accessed` that can fault, and it counts as started.
"""

from __future__ import annotations

import cffi
import numpy as np

from .. import native

_ffi = cffi.FFI()
_ffi.cdef("uint32_t cn_fault_point(const char *target, uint64_t pc, const uint8_t *code, "
          "const uint8_t *sizes, uint32_t n, uint32_t accessed);")
_lib = None


def instructions_started(arch: str, pc: int, code: bytes, sizes: bytes, accessed: int) -> int:
    global _lib
    if _lib is None:
        _lib = _ffi.dlopen(str(native.consumer_path()))
    n = len(sizes)
    return int(_lib.cn_fault_point(arch.encode(), pc, code, sizes, n, min(accessed, n)))


def block_code(rows, block_id: int) -> tuple[int, bytes, bytes] | None:
    """(pc, instruction sizes, instruction bytes) of a block, from per-packet
    (BLOCK, INSN_SIZE, INSN_BYTES) section copies."""
    for blocks, insn_size, insn_bytes in rows:
        hit = np.flatnonzero(blocks["block_id"] == block_id)
        if not len(hit):
            continue
        k = int(hit[0])
        first_insn = int(blocks["n_insns"][:k].sum())
        first_byte = int(blocks["n_bytes"][:k].sum())
        n, n_bytes = int(blocks["n_insns"][k]), int(blocks["n_bytes"][k])
        return (int(blocks["pc"][k]), bytes(insn_size[first_insn: first_insn + n]),
                bytes(insn_bytes[first_byte: first_byte + n_bytes]))
    return None


def died_at(rows, arch: str, block_id: int, accessed: int, full: int) -> int:
    """Instructions of a thread's last block (full long) that ran, when the thread
    stopped inside it; rows are the per-packet block section copies."""
    code = block_code(rows, block_id)
    if code is None:
        return min(max(accessed, 1), full)
    return min(instructions_started(arch, code[0], code[2], code[1], accessed), full)
