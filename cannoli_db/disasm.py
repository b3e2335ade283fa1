"""Disassembly of recorded blocks with capstone.

The bytes come from the recording (`blocks.bytes`, as QEMU translated them),
never from the file on disk, so self-modifying and JIT code show what really
ran.  A block is disassembled once and cached by block id.
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
    "riscv64": (getattr(capstone, "CS_ARCH_RISCV", None), getattr(capstone, "CS_MODE_RISCV64", 0)),
    "mips": (capstone.CS_ARCH_MIPS, capstone.CS_MODE_MIPS32 | capstone.CS_MODE_BIG_ENDIAN),
    "mipsel": (capstone.CS_ARCH_MIPS, capstone.CS_MODE_MIPS32 | capstone.CS_MODE_LITTLE_ENDIAN),
}


class Disassembler:
    def __init__(self, arch: str):
        cs_arch, mode = _MODES.get(arch, (None, 0))
        if cs_arch is None:
            raise CannoliError(f"no disassembler for {arch!r} guests in this capstone")
        self._cs = capstone.Cs(cs_arch, mode)
        self._blocks: dict[int, list[str]] = {}

    def block(self, block_id: int, pc: int, code: bytes, sizes: list[int]) -> list[str]:
        """Text of each instruction of a block, split by the recorded instruction sizes."""
        cached = self._blocks.get(block_id)
        if cached is None:
            cached = []
            offset = 0
            for size in sizes:
                cached.append(self._one(code[offset: offset + size], pc + offset))
                offset += size
            self._blocks[block_id] = cached
        return cached

    def _one(self, code: bytes, pc: int) -> str:
        for insn in self._cs.disasm(code, pc, 1):
            return f"{insn.mnemonic} {insn.op_str}".strip()
        return f"(bad) {code.hex()}"
