"""Which registers each instruction of a block reads and writes (capstone), as
tracked register names (arches.Arch.canonical), and the known-register rule.

The rule (`Flow.after`): an instruction's outputs are known when all its
inputs are known; a register it writes only in part (x86 `mov al, 1`, the
status bits of eflags, an element insert into a vector) is known afterwards
only if it was known before.  An instruction whose result comes from outside
the block (syscall, cpuid, rdtsc, mrs, csrr, ...) makes its outputs unknown.

Reads are over-approximated where capstone's lists are incomplete (aarch64
aliases such as `cmp x0, #1`, which capstone lists as writing x0 and reading
nothing; riscv and mips, where capstone 5 has no register-access lists): every
register operand other than a pure destination counts as read.  Too many reads
only make fewer registers known; too few could pass an unknown value as known.
Writes that capstone misses are caught at run time: the emulator compares the
registers around any instruction with unknown inputs (emulator.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import capstone

from .arches import KEEP, Arch

# aarch64/arm mnemonics whose register operands (all of them for loads, the first for the rest)
# are destinations only
_DEST_FIRST = ("mov", "fmov", "dup", "adr", "cset", "csetm", "mrs", "movi", "mvn", "mvni", "vmov", "vldr")
_DEST_ALL = ("ld", "pop", "vld", "vpop")


@dataclass(frozen=True)
class Flow:
    reads: frozenset[str]
    writes: frozenset[str]
    partial: frozenset[str]       # written, but keeping the bits the instruction does not write
    environment: bool             # outputs come from outside the block
    mnemonic: str
    spoils: frozenset[str] = frozenset()  # unknown afterwards whatever the inputs (undefined flags)
    atomic: bool = False                  # an atomic read-modify-write (its recorded store value is not what it stored)
    flags_extra: int | None = KEEP        # the flags register's extra bits afterwards (arches.Flags.after)
    touches: frozenset[str] = frozenset()  # writes and every register operand: unknown if it cannot run
    store_unrecorded: bool = False        # its stores are not in the recording
    repeats: bool = False                 # a rep-prefixed string instruction (runs as a loop)

    @property
    def plain(self) -> bool:
        """Re-executed without watching: nothing about it needs the per-instruction checks."""
        return not (self.environment or self.store_unrecorded or self.repeats)

    def inputs_known(self, known: set[str]) -> bool:
        return not self.environment and self.reads <= known

    def after(self, known: set[str], inputs_known: bool) -> set[str]:
        """The known set after this instruction ran (with inputs known or not)."""
        out = known - (self.touches if self.environment else self.writes)
        if inputs_known:
            out |= {r for r in self.writes if r not in self.partial or r in known}
        return out - self.spoils


UNDECODED = Flow(frozenset({"?"}), frozenset(), frozenset(), True, "(bad)", flags_extra=None)


def plain_known(flows: list[Flow], known: frozenset[str], stop: int) -> tuple[frozenset[str], ...] | None:
    """The known sets before instructions 0 .. stop if every one of the first `stop` instructions is
    plain and has known inputs (then nothing needs watching while they run); else None."""
    current = set(known)
    out = [known]
    for flow in flows[:stop]:
        if not (flow.plain and flow.inputs_known(current)):
            return None
        current = flow.after(current, True)
        out.append(frozenset(current))
    return tuple(out)


def block_flows(a: Arch, cs: capstone.Cs, pc: int, code: bytes, sizes: list[int]) -> list[Flow]:
    """One Flow per instruction, split by the recorded sizes (an undecodable one reads '?', never known)."""
    flows = []
    offset = 0
    for size in sizes:
        insn = next(cs.disasm(code[offset: offset + size], pc + offset, 1), None)
        flows.append(UNDECODED if insn is None or insn.size != size else _flow(a, insn))
        offset += size
    return flows


def _flow(a: Arch, insn) -> Flow:
    name = insn.reg_name
    atomic = insn.mnemonic.startswith(a.atomic_mnemonics) if a.atomic_mnemonics else False
    mnemonic = insn.mnemonic.split(".")[0] if a.name in ("arm", "aarch64") else insn.mnemonic
    mnemonic = mnemonic.removeprefix("rep ").removeprefix("repne ").removeprefix("lock ")
    reads: set[str] = set()
    written: set[str] = set()  # capstone names
    if a.has_regs_access:
        try:
            r, w = insn.regs_access()
            reads |= {name(x) for x in r}
            written |= {name(x) for x in w}
        except capstone.CsError:
            pass
    reads |= {name(x) for x in insn.regs_read}
    written |= {name(x) for x in insn.regs_write}
    ops = list(insn.operands)
    reg_ops = [(i, op) for i, op in enumerate(ops) if op.type == capstone.CS_OP_REG]
    for op in ops:
        if op.type == capstone.CS_OP_MEM:
            reads |= {name(r) for r in (op.mem.base, op.mem.index) if r}
            if a.name == "x86_64" and op.mem.segment:
                reads.add(name(op.mem.segment))
    if a.name == "x86_64":
        for _, op in reg_ops:
            if op.access & capstone.CS_AC_READ:
                reads.add(name(op.reg))
            if op.access & capstone.CS_AC_WRITE:
                written.add(name(op.reg))
        if mnemonic in a.zero_idioms and len(reg_ops) == 2 and len(ops) == 2 and ops[0].reg == ops[1].reg:
            reads.discard(name(ops[0].reg))
    else:
        dest_all = mnemonic.startswith(_DEST_ALL)
        for i, op in reg_ops:
            if not (dest_all or (i == 0 and mnemonic.startswith(_DEST_FIRST) and mnemonic != "movk")):
                reads.add(name(op.reg))
        if reg_ops and not a.has_regs_access:
            written.add(name(reg_ops[0][1].reg))
    canonical = a.canonical
    writes = {canonical(w) for w in written}
    partial = {canonical(w) for w in written if a.partial_write(mnemonic, canonical(w), w)}
    reads = {canonical(r) for r in reads} - a.constants - {"pc"}
    prefixes = a.environment_prefixes or ("\0",)
    environment = mnemonic in a.environment or mnemonic.startswith(prefixes) or insn.mnemonic.startswith(prefixes)
    operands = {name(op.reg) for _, op in reg_ops}
    foreign = bool(a.foreign_registers and any(re.match(a.foreign_registers, r) for r in operands | reads | written))
    environment = environment or foreign
    writes -= a.constants | {"pc"}
    # SVE predicate instructions set NZCV without capstone listing it
    spoils = frozenset({a.flags.name}) if a.flags and (mnemonic in a.flags_undefined or foreign) else frozenset()
    touches = frozenset(writes | {canonical(r) for r in operands}) - a.constants - {"pc"}
    return Flow(frozenset(reads), frozenset(writes), frozenset(partial & writes), environment, mnemonic, spoils,
                atomic, a.flags.after(insn) if a.flags and a.flags.after else KEEP, touches,
                mnemonic in a.stores_unrecorded, insn.mnemonic.startswith(("rep ", "repne ", "repe ", "repz ", "repnz ")))
