"""Disassembly of recorded blocks with capstone.

The bytes come from the recording (`blocks.bytes`, as QEMU translated them),
never from the file on disk, so self-modifying and JIT code show what really
ran.  A block is disassembled once and cached by block id.

32-bit ARM code may be ARM or Thumb, and the plugin API does not say which.
The recorded instruction sizes do: a 2-byte instruction only exists in Thumb,
and a block of 4-byte instructions is ARM if capstone reads every one of them
as ARM with that size, Thumb otherwise (Debian's armhf code is Thumb-2).
"""

from __future__ import annotations

import capstone

from .errors import CannoliError

# QEMU target name -> capstone (arch, mode)
_MODES = {
    "x86_64": (capstone.CS_ARCH_X86, capstone.CS_MODE_64),
    "i386": (capstone.CS_ARCH_X86, capstone.CS_MODE_32),
    "aarch64": (capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM),
    "arm": (capstone.CS_ARCH_ARM, capstone.CS_MODE_ARM),
    "riscv64": (capstone.CS_ARCH_RISCV, capstone.CS_MODE_RISCV64 | capstone.CS_MODE_RISCVC),
    "mips": (capstone.CS_ARCH_MIPS, capstone.CS_MODE_MIPS32 | capstone.CS_MODE_BIG_ENDIAN),
    "mipsel": (capstone.CS_ARCH_MIPS, capstone.CS_MODE_MIPS32 | capstone.CS_MODE_LITTLE_ENDIAN),
}


# (block_id, pc, bytes, [instruction sizes]) of the blocks whose ids are in $ids
BLOCK_CODE_SQL = """
    SELECT b.block_id, b.pc, b.bytes, list(bi.size ORDER BY bi.n)
    FROM blocks b JOIN block_insns bi USING (block_id)
    WHERE b.block_id IN (SELECT unnest($ids::UINTEGER[]))
    GROUP BY b.block_id, b.pc, b.bytes"""


class Disassembler:
    def __init__(self, arch: str):
        cs_arch, mode = _MODES.get(arch, (None, 0))
        if cs_arch is None:
            raise CannoliError(f"no disassembler for {arch!r} guests in this capstone")
        self._cs = capstone.Cs(cs_arch, mode)
        self._thumb = capstone.Cs(cs_arch, capstone.CS_MODE_THUMB) if arch == "arm" else None
        self._blocks: dict[int, list[str]] = {}

    def block(self, block_id: int, pc: int, code: bytes, sizes: list[int]) -> list[str]:
        """Text of each instruction of a block, split by the recorded instruction sizes."""
        cached = self._blocks.get(block_id)
        if cached is None:
            cs = self._thumb if self.is_thumb(pc, code, sizes) else self._cs
            cached = []
            offset = 0
            for size in sizes:
                cached.append(self._one(cs, code[offset: offset + size], pc + offset))
                offset += size
            self._blocks[block_id] = cached
        return cached

    def is_thumb(self, pc: int, code: bytes, sizes: list[int]) -> bool:
        """An arm block is Thumb unless capstone reads every instruction as ARM with its recorded size."""
        return self._thumb is not None and not self._reads_all(self._cs, pc, code, sizes)

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
