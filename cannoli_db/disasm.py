"""Disassembly of recorded blocks with capstone.

The bytes come from the recording (`blocks.bytes`, as QEMU translated them),
never from the file on disk, so self-modifying and JIT code show what really
ran.  A block is disassembled once and cached by block id.

32-bit ARM code may be ARM or Thumb, and the plugin API does not say which.
The recorded instruction sizes do: a 2-byte instruction only exists in Thumb.
A block of 4-byte instructions is Thumb if capstone cannot read it as ARM,
ARM if the instructions lack the halfword prefix of 32-bit Thumb-2 instructions
(top five bits 11101, 11110 or 11111) or do not read as Thumb, and ambiguous
otherwise: a lone Thumb `bl` is also a valid ARM word, and an ARM `bx lr` has
the Thumb-2 prefix.  Given all blocks (`arm_modes`), an ambiguous block takes
the mode of the nearest decided block below it in memory (one function is in
one mode); alone, it is taken as Thumb (Debian's armhf code is Thumb-2).
"""

from __future__ import annotations

import capstone
import numpy as np

from . import arch as guest_arch

# (block_id, pc, bytes, [instruction sizes]) of the blocks whose ids are in $ids
BLOCK_CODE_SQL = """
    SELECT b.block_id, b.pc, b.bytes, list(bi.size ORDER BY bi.n)
    FROM blocks b JOIN block_insns bi USING (block_id)
    WHERE b.block_id IN (SELECT unnest($ids::UINTEGER[]))
    GROUP BY b.block_id, b.pc, b.bytes"""


def _thumb2_shaped(code: bytes, sizes: list[int]) -> bool:
    """Every instruction is 4 bytes with a first halfword (little-endian) of a 32-bit Thumb-2 instruction."""
    offset = 0
    for size in sizes:
        if size != 4 or code[offset + 1] >> 3 < 0b11101:
            return False
        offset += size
    return True


class Disassembler:
    def __init__(self, arch: str, detail: bool = False):
        guest = guest_arch.get(arch)
        self._cs = capstone.Cs(*guest.capstone())
        self._thumb = capstone.Cs(*guest.capstone(thumb=True)) if guest.capstone_thumb else None
        for cs in (self._cs, self._thumb):
            if cs is not None:
                cs.detail = detail
        self._blocks: dict[int, list[str]] = {}

    def capstone_for(self, pc: int, code: bytes, sizes: list[int], thumb: bool | None = None) -> capstone.Cs:
        """The decoder of a block: for 32-bit ARM, Thumb or ARM as `thumb` (from arm_modes) or the block says."""
        if self._thumb is None:
            return self._cs
        if thumb is None:
            thumb = self.thumb_of(pc, code, sizes) is not False
        return self._thumb if thumb else self._cs

    def thumb_of(self, pc: int, code: bytes, sizes: list[int]) -> bool | None:
        """32-bit ARM: is the block Thumb?  None when both readings fit (see the module docstring)."""
        if 2 in sizes or not self._reads_all(self._cs, pc, code, sizes):
            return True
        if not _thumb2_shaped(code, sizes) or not self._reads_all(self._thumb, pc, code, sizes):
            return False
        return None

    def arm_modes(self, pcs: np.ndarray, decided: list[bool | None]) -> list[bool]:
        """Thumb or not for every block: an undecided one takes the mode of the nearest decided block at
        or below its pc (the first decided block above it if none is below; Thumb if none is decided)."""
        known = np.flatnonzero(np.array([d is not None for d in decided], bool))
        if not len(known):
            return [True] * len(decided)
        order = known[np.argsort(pcs[known], kind="stable")]
        at = np.searchsorted(pcs[order], pcs, side="right") - 1
        return [d if d is not None else decided[order[max(int(k), 0)]] for d, k in zip(decided, at)]

    def block(self, block_id: int, pc: int, code: bytes, sizes: list[int]) -> list[str]:
        """Text of each instruction of a block, split by the recorded instruction sizes."""
        cached = self._blocks.get(block_id)
        if cached is None:
            cs = self.capstone_for(pc, code, sizes)
            cached = []
            offset = 0
            for size in sizes:
                cached.append(self._one(cs, code[offset: offset + size], pc + offset))
                offset += size
            self._blocks[block_id] = cached
        return cached

    def is_thumb(self, pc: int, code: bytes, sizes: list[int]) -> bool:
        """Is a 32-bit ARM block Thumb (the rule of capstone_for, for one block alone)?"""
        return self._thumb is not None and self.thumb_of(pc, code, sizes) is not False

    @staticmethod
    def _reads_all(cs, pc: int, code: bytes, sizes: list[int]) -> bool:
        offset = 0
        for size in sizes:
            got = list(cs.disasm(code[offset: offset + size], pc + offset, 1))
            if len(got) != 1 or got[0].size != size:
                return False
            offset += size
        return True

    @staticmethod
    def _one(cs, code: bytes, pc: int) -> str:
        for insn in cs.disasm(code, pc, 1):
            return f"{insn.mnemonic} {insn.op_str}".strip()
        return f"(bad) {code.hex()}"
