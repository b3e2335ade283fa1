"""Per-architecture facts for re-execution, in one table (ARCHES), keyed by
cannoli_db.arch (which has the capstone modes and the word size).

For each architecture: the unicorn architecture, mode and CPU model; the
recorded registers by gdb name (the names the plugin records, see
docs/format.md §4a) and their unicorn ids; the pc; the flags register and
which of its bits the emulator computes; how a capstone register name maps to
the register it is part of (`al` -> `rax`, `w3` -> `x3`, `nzcv` -> `cpsr`,
`ymm2` -> `xmm2`); which names are constants (`xzr`); which writes are partial;
and the instructions whose result comes from outside the block (the kernel,
the clock, the CPU's identity), whose outputs are therefore unknown.

Registers that no table row names (x86 segment selectors, gs_base, vector
registers, aarch64 tpidr_el0, ...) are never recorded: their canonical names
stay unknown unless an instruction of the block computes them from known
inputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import unicorn
from unicorn import arm64_const as A64, arm_const as ARM, mips_const as MIPS, riscv_const as RV, x86_const as X86

from .. import arch as guest_arch


KEEP = -1  # Flags.after: the instruction leaves the extra bits as they were


@dataclass(frozen=True)
class Flags:
    """The recorded flags register: unicorn register `uc_id` holds the bits in `mask`; the other
    bits of the recorded value (arm mode bits, ...) are carried over from block entry, except the
    `extra` bits, which `after(capstone insn)` gives for the state after that instruction (KEEP:
    unchanged; None: unknown)."""

    name: str
    uc_id: int
    mask: int
    extra: int = 0
    after: Callable[[object], int | None] | None = None


@dataclass(frozen=True)
class Arch:
    guest: guest_arch.Arch
    uc_arch: int
    uc_mode: int
    cpu_model: int | None
    regs: dict[str, int]               # recorded gdb name -> unicorn id (flags and pc excluded)
    pc: int                            # unicorn id of the pc
    flags: Flags | None
    canonical: Callable[[str], str]    # capstone register name -> tracked register name
    constants: frozenset[str]          # canonical names that always read as a known constant
    partial_write: Callable[[str, str, bool], bool]  # (mnemonic, canonical, written name) -> keeps old bits
    environment: frozenset[str]        # mnemonics whose outputs come from outside the block
    environment_prefixes: tuple[str, ...] = ()
    zero_idioms: frozenset[str] = field(default_factory=frozenset)  # `op r, r` that read nothing
    has_regs_access: bool = True       # capstone can list implicit reads and writes for this arch
    syscall_regs: tuple[str, ...] = ()  # the syscall number's register, then the argument registers
    # mnemonics after which the flags are unknown: they leave flags undefined, and QEMU versions
    # (the recording's, unicorn's 5.0) compute them differently
    flags_undefined: frozenset[str] = frozenset()
    rep_count: str | None = None       # the count register of rep-prefixed string instructions
    # atomic read-modify-write instructions (capstone mnemonic prefixes): QEMU's plugin API reports the
    # operand as their store value (fetch-and-add: the addend), not what was stored, so their recorded
    # store values are not compared
    atomic_mnemonics: tuple[str, ...] = ()
    # stores the recording does not log (QEMU writes host memory directly, without a plugin callback):
    # aarch64 `dc zva` zeroes a whole cache block
    stores_unrecorded: frozenset[str] = frozenset()
    # registers whose size the recording's CPU and unicorn's differ on: an instruction touching one
    # has unknown outputs (aarch64 SVE: QEMU 10 `max` has 512-bit vectors, unicorn's QEMU 5 none usable)
    foreign_registers: str | None = None  # a regular expression over capstone register names

    @property
    def name(self) -> str:
        return self.guest.name

    @property
    def word_bits(self) -> int:
        return 8 * self.guest.pointer_size


# -- x86 ---------------------------------------------------------------------

_X86_GPR = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")
_X86_ALIAS = {}
for _full in _X86_GPR:
    _base = _full[1:]              # ax, bx, ..., si, di, bp, sp
    _X86_ALIAS.update({"e" + _base: _full, _base: _full})
    if _base.endswith("x"):
        _X86_ALIAS.update({_base[0] + "l": _full, _base[0] + "h": _full})
    else:
        _X86_ALIAS[_base + "l"] = _full
_X86_ALIAS.update({"rflags": "eflags", "flags": "eflags", "rip": "pc", "eip": "pc", "ip": "pc", "fs": "fs_base"})
_X86_NUMBERED = re.compile(r"^(r\d+)[bwd]?$")
_X86_VECTOR = re.compile(r"^[xyz]mm(\d+)$")
# vector destinations these mnemonics write whole (the others may keep bits: movss xmm, xmm; cvtsi2sd; pinsrd)
_X86_FULL_VECTOR = frozenset({
    "movdqa", "movdqu", "movaps", "movups", "movapd", "movupd", "lddqu", "movntdqa", "pshufd", "pshuflw",
    "pshufhw", "movd", "movq", "pmovmskb", "movmskps", "movmskpd",
})
# 8- and 16-bit GPR names: a write to them keeps the rest of the 64-bit register
_X86_NARROW = re.compile(r"^([a-d][lhx]|[sd]il?|[bs]pl?|[sd]i|[bs]p|r\d+[bw])$")


def _x86_canonical(name: str) -> str:
    if name in _X86_ALIAS:
        return _X86_ALIAS[name]
    m = _X86_NUMBERED.match(name)
    if m:
        return m[1]
    m = _X86_VECTOR.match(name)
    if m:
        return f"xmm{m[1]}"
    return name


def _x86_partial(mnemonic: str, canonical: str, written: str) -> bool:
    if canonical == "eflags":
        return True   # status flags only; DF, IF and the reserved bits stay
    if canonical.startswith("xmm"):
        if mnemonic in ("movss", "movsd"):
            return False  # the register forms read their destination (capstone says so), the load forms zero it
        return written.startswith("xmm") and mnemonic not in _X86_FULL_VECTOR
    return bool(_X86_NARROW.match(written))


_X86_ENVIRONMENT = frozenset({
    "cpuid", "rdtsc", "rdtscp", "rdrand", "rdseed", "rdpid", "rdpmc", "xgetbv", "rdpkru", "syscall", "sysenter",
    "int", "int1", "int3", "into", "rdfsbase", "rdgsbase", "rdsspq", "rdsspd", "xbegin", "xend", "xabort", "xtest",
})
# rotates by more than one leave OF undefined: QEMU 10 and unicorn's QEMU 5 set it differently
_X86_FLAGS_UNDEFINED = frozenset({"rol", "ror", "rcl", "rcr"})
# Locked arithmetic: QEMU runs it as an atomic op-and-fetch and its plugin API reports the *result* as
# the loaded value (and the operand as the stored one), so the recorded load is not what was read:
# the outputs (flags, for lock dec: whether the count reached 0) are unknown.  lock xadd and lock
# cmpxchg report the old value, as loaded, and are re-executed.
_X86_ATOMIC_RESULT = tuple(f"lock {op}" for op in (
    "add", "sub", "inc", "dec", "and", "or", "xor", "neg", "not", "adc", "sbb", "bt"))
_X86_ZERO = frozenset({"xor", "sub", "sbb", "pxor", "xorps", "xorpd", "psubb", "psubw", "psubd", "psubq",
                       "pcmpgtb", "pcmpgtw", "pcmpgtd", "pcmpgtq", "vpxor", "vxorps", "vxorpd"})


def _x86_regs(names) -> dict[str, int]:
    return {name: getattr(X86, f"UC_X86_REG_{name.upper()}") for name in names}


# -- aarch64 -----------------------------------------------------------------

def _a64_canonical(name: str) -> str:
    if name in ("wsp", "sp"):
        return "sp"
    if name == "nzcv":
        return "cpsr"
    if name == "fp":
        return "x29"
    if name == "lr":
        return "x30"
    if name in ("xzr", "wzr"):
        return "zr"
    if re.fullmatch(r"[wx]\d+", name):
        return "x" + name[1:]
    m = re.fullmatch(r"[bhsdqvz](\d+)", name)
    if m:
        return f"v{m[1]}"
    return name


# element inserts and lane loads keep the other lanes of their vector destination
_A64_PARTIAL_VECTOR = frozenset({"ins", "mov", "ld1", "ld2", "ld3", "ld4", "ld1r", "bsl", "bit", "bif", "sqxtn2",
                                 "xtn2", "uzp1", "fmla", "fmls", "mla", "mls"})


def _a64_partial(mnemonic: str, canonical: str, written: str) -> bool:
    if canonical == "cpsr":
        return True
    if canonical.startswith("v"):
        # a scalar view (b/h/s/d/q) written by any instruction clears the rest of the vector
        return written.startswith("v") and mnemonic in _A64_PARTIAL_VECTOR
    return False


def _a64_btype(insn) -> int | None:
    """PSTATE.BTYPE (bits 10-11) after an instruction, as QEMU sets it for a CPU with BTI: BLR* -> 2,
    BR* to x16/x17 -> 1, BR* to another register -> 1 or 3 by whether the page is guarded (which
    the recording does not say: unknown), anything else clears it."""
    mnemonic = insn.mnemonic
    if mnemonic.startswith("blr"):
        return 2 << 10
    if mnemonic.startswith("br"):
        target = insn.reg_name(insn.operands[0].reg) if insn.operands else ""
        return 1 << 10 if target in ("x16", "x17") else None
    return 0


_A64_ATOMIC = tuple(f"{kind}{op}" for kind in ("ld", "st") for op in (
    "add", "clr", "eor", "set", "smax", "smin", "umax", "umin")) + ("cas", "swp")
# svc; and the SVE instructions whose result is the vector length (no SVE register operand)
_A64_ENVIRONMENT = frozenset({"svc", "hvc", "smc", "brk", "hlt", "rdvl", "addvl", "addpl"} | {
    f"{op}{size}" for op in ("cnt", "inc", "dec", "sqinc", "sqdec", "uqinc", "uqdec") for size in "bhwd"})


# -- arm (32-bit) --------------------------------------------------------------

_ARM_ALIAS = {"sb": "r9", "sl": "r10", "fp": "r11", "ip": "r12", "r13": "sp", "r14": "lr", "r15": "pc",
              "apsr": "cpsr", "apsr_nzcv": "cpsr", "cpsr_nzcv": "cpsr", "cpsr_fc": "cpsr", "itstate": "cpsr"}


def _arm_canonical(name: str) -> str:
    if name in _ARM_ALIAS:
        return _ARM_ALIAS[name]
    m = re.fullmatch(r"([sdq])(\d+)", name)
    if m:  # s4..s7 = d2..d3 = q1
        return f"q{int(m[2]) // {'s': 4, 'd': 2, 'q': 1}[m[1]]}"
    return name


def _arm_partial(mnemonic: str, canonical: str, written: str) -> bool:
    return canonical == "cpsr" or canonical.startswith("q")


# -- riscv, mips -----------------------------------------------------------------

def _riscv_canonical(name: str) -> str:
    return {"s0": "fp", "x0": "zero", "x1": "ra", "x2": "sp"}.get(name, name)


_MIPS_ABI = ["zero", "at", "v0", "v1", "a0", "a1", "a2", "a3", "t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7",
             "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "t8", "t9", "k0", "k1", "gp", "sp", "fp", "ra"]
_MIPS_NAME = {abi: f"r{n}" for n, abi in enumerate(_MIPS_ABI)} | {"s8": "r30", "zero": "zero"}


def _mips_canonical(name: str) -> str:
    name = name.lstrip("$")
    if name.isdigit():
        return "zero" if name == "0" else f"r{name}"
    return _MIPS_NAME.get(name, name)


def _never_partial(mnemonic: str, canonical: str, written: str) -> bool:
    return False


_RISCV_REGS = ("ra", "sp", "gp", "tp", "t0", "t1", "t2", "fp", "s1", "a0", "a1", "a2", "a3", "a4", "a5", "a6",
               "a7", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "t3", "t4", "t5", "t6")


_MIPS_REGS = {f"r{n}": getattr(MIPS, f"UC_MIPS_REG_{n}") for n in range(1, 32)} | {
    "lo": MIPS.UC_MIPS_REG_LO, "hi": MIPS.UC_MIPS_REG_HI}


ARCHES: dict[str, Arch] = {a.name: a for a in (
    Arch(
        guest_arch.get("x86_64"), unicorn.UC_ARCH_X86, unicorn.UC_MODE_64, X86.UC_CPU_X86_HASWELL,
        _x86_regs(("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
                   "r14", "r15", "fs_base")),
        X86.UC_X86_REG_RIP, Flags("eflags", X86.UC_X86_REG_EFLAGS, 0xFFFFFFFF),
        _x86_canonical, frozenset(), _x86_partial, _X86_ENVIRONMENT, environment_prefixes=_X86_ATOMIC_RESULT,
        zero_idioms=_X86_ZERO,
        syscall_regs=("rax", "rdi", "rsi", "rdx", "r10", "r8", "r9"), flags_undefined=_X86_FLAGS_UNDEFINED,
        rep_count="rcx", atomic_mnemonics=("lock ",)),
    Arch(
        guest_arch.get("aarch64"), unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM, A64.UC_CPU_ARM64_MAX,
        {f"x{n}": getattr(A64, f"UC_ARM64_REG_X{n}") for n in range(31)} | {"sp": A64.UC_ARM64_REG_SP},
        A64.UC_ARM64_REG_PC, Flags("cpsr", A64.UC_ARM64_REG_NZCV, 0xF0000000, 0xC00, _a64_btype),
        _a64_canonical, frozenset({"zr"}), _a64_partial, _A64_ENVIRONMENT, environment_prefixes=("mrs",),
        syscall_regs=("x8", "x0", "x1", "x2", "x3", "x4", "x5"), atomic_mnemonics=_A64_ATOMIC,
        stores_unrecorded=frozenset({"dc"}), foreign_registers=r"^([zp]\d+|ffr)$"),
    Arch(
        guest_arch.get("arm"), unicorn.UC_ARCH_ARM, unicorn.UC_MODE_ARM, ARM.UC_CPU_ARM_MAX,
        {f"r{n}": getattr(ARM, f"UC_ARM_REG_R{n}") for n in range(13)} | {"sp": ARM.UC_ARM_REG_SP,
                                                                         "lr": ARM.UC_ARM_REG_LR},
        ARM.UC_ARM_REG_PC, Flags("cpsr", ARM.UC_ARM_REG_APSR, 0xF80F0000),
        _arm_canonical, frozenset(), _arm_partial, frozenset({"svc", "bkpt", "udf"}),
        environment_prefixes=("mrc", "mrrc", "vmrs"),
        syscall_regs=("r7", "r0", "r1", "r2", "r3", "r4", "r5")),
    Arch(
        guest_arch.get("riscv64"), unicorn.UC_ARCH_RISCV, unicorn.UC_MODE_RISCV64, None,
        {name: getattr(RV, f"UC_RISCV_REG_{name.upper()}") for name in _RISCV_REGS},
        RV.UC_RISCV_REG_PC, None, _riscv_canonical, frozenset({"zero"}), _never_partial,
        frozenset({"ecall", "ebreak", "rdtime", "rdcycle", "rdinstret", "frflags", "frrm", "frcsr"}),
        environment_prefixes=("csr",), has_regs_access=False,
        syscall_regs=("a7", "a0", "a1", "a2", "a3", "a4", "a5")),
    Arch(
        guest_arch.get("mipsel"), unicorn.UC_ARCH_MIPS, unicorn.UC_MODE_MIPS32 | unicorn.UC_MODE_LITTLE_ENDIAN, None,
        _MIPS_REGS, MIPS.UC_MIPS_REG_PC, None, _mips_canonical, frozenset({"zero"}), _never_partial,
        frozenset({"syscall", "rdhwr", "break", "teq", "mfc0", "sdbbp"}), has_regs_access=False,
        syscall_regs=("r2", "r4", "r5", "r6", "r7")),  # o32: arguments 5 and 6 are on the stack
)}


def arch(name: str) -> Arch:
    """The re-execution facts of an architecture (a CannoliError for a name cannoli_db.arch does not know)."""
    return ARCHES[guest_arch.get(name).name]


def register_names(a: Arch) -> list[str]:
    """The recorded registers in the plugin's order, flags last (as format.md §4a lists them)."""
    return list(a.regs) + ([a.flags.name] if a.flags else [])
