"""What gdb is told about a guest architecture: its registers in `g`-packet
order and the target description XML that numbers them (GDB manual, "Target
Descriptions" and "Standard Target Features").

One table per architecture is the single source of both: a register's number
in `g`/`p` packets is its position in the table, and the XML lists the table
in order, so the two cannot disagree.  Register names are gdb's, which are
also the names `Trace.registers_at` uses (docs/format.md, section 4a), except
the pc, which the trace calls "pc" on every architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape as xml_escape

from .. import arch as guest_arch
from ..errors import CannoliError


@dataclass(frozen=True)
class Register:
    name: str
    bits: int
    type: str = "int"
    group: str | None = None
    feature: str = "core"

    @property
    def size(self) -> int:
        return self.bits // 8


@dataclass(frozen=True)
class Target:
    """An architecture as gdb sees it."""

    guest: guest_arch.Arch         # the trace's meta.arch; its pc and sp are the registers named there
    gdb_arch: str                  # <architecture> in the XML
    registers: tuple[Register, ...]
    features: dict                 # short feature name -> (gdb feature name, type definitions XML)
    fp: str                        # the frame pointer's register name
    # gdbarch_have_nonsteppable_watchpoint: gdb expects the stop *before* the access and steps
    # over it itself (infrun.c, handle_signal_stop), in either direction
    watch_stops_before_access: bool

    @property
    def arch(self) -> str:
        return self.guest.name

    @property
    def pc(self) -> str:
        return self.guest.pc_register

    @property
    def sp(self) -> str:
        return self.guest.sp_register

    @property
    def word(self) -> int:
        """Bytes of an address (auxv entries)."""
        return self.guest.pointer_size

    def number(self, name: str) -> int | None:
        for n, reg in enumerate(self.registers):
            if reg.name == name:
                return n
        return None

    def value(self, regs: dict[str, int], name: str) -> int | None:
        """A register's value from Trace.registers_at's dict (None: unknown)."""
        return regs.get("pc" if name == self.pc else name)

    def hex(self, regs: dict[str, int], reg: Register) -> str:
        """One register as the `g`/`p` packets carry it: target-order (little-endian) bytes in hex,
        `xx` per byte when the trace does not know it."""
        value = self.value(regs, reg.name)
        if value is None:
            return "xx" * reg.size
        return (value & ((1 << reg.bits) - 1)).to_bytes(reg.size, "little").hex()

    def xml(self) -> str:
        parts = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', "<target>",
                 f"<architecture>{self.gdb_arch}</architecture>", "<osabi>GNU/Linux</osabi>"]
        for short, (name, types) in self.features.items():
            parts.append(f'<feature name="{name}">{types}')
            for n, reg in enumerate(self.registers):
                if reg.feature == short:
                    group = f' group="{reg.group}"' if reg.group else ""
                    parts.append(f'<reg name="{xml_escape(reg.name)}" bitsize="{reg.bits}" type="{reg.type}" '
                                 f'regnum="{n}"{group}/>')
            parts.append("</feature>")
        parts.append("</target>")
        return "\n".join(parts) + "\n"


def _flags(type_id: str, size: int, fields: dict[str, int]) -> str:
    return (f'<flags id="{type_id}" size="{size}">'
            + "".join(f'<field name="{name}" start="{bit}" end="{bit}"/>' for name, bit in fields.items())
            + "</flags>")


_EFLAGS = _flags("i386_eflags", 4, {"CF": 0, "": 1, "PF": 2, "AF": 4, "ZF": 6, "SF": 7, "TF": 8, "IF": 9,
                                    "DF": 10, "OF": 11, "NT": 14, "RF": 16, "VM": 17, "AC": 18, "VIF": 19,
                                    "VIP": 20, "ID": 21})
_VEC128 = ('<vector id="v4f" type="ieee_single" count="4"/><vector id="v2d" type="ieee_double" count="2"/>'
           '<vector id="v16i8" type="int8" count="16"/><vector id="v8i16" type="int16" count="8"/>'
           '<vector id="v4i32" type="int32" count="4"/><vector id="v2i64" type="int64" count="2"/>'
           '<union id="vec128"><field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>'
           '<field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>'
           '<field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>'
           '<field name="uint128" type="uint128"/></union>')
_CPSR = _flags("cpsr_flags", 4, {"SP": 0, "EL0": 2, "EL1": 3, "F": 6, "I": 7, "A": 8, "D": 9, "SSBS": 12,
                                 "BTYPE0": 10, "BTYPE1": 11, "IL": 20, "SS": 21, "PAN": 22, "UAO": 23,
                                 "DIT": 24, "TCO": 25, "V": 28, "C": 29, "Z": 30, "N": 31})

_X86_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", *(f"r{n}" for n in range(8, 16)))

X86_64 = Target(
    guest=guest_arch.get("x86_64"),
    gdb_arch="i386:x86-64",
    registers=(
        *(Register(name, 64, "data_ptr" if name in ("rbp", "rsp") else "int64") for name in _X86_GPRS),
        Register("rip", 64, "code_ptr"),
        Register("eflags", 32, "i386_eflags"),
        *(Register(name, 32, "int32") for name in ("cs", "ss", "ds", "es", "fs", "gs")),
        *(Register(f"st{n}", 80, "i387_ext") for n in range(8)),
        *(Register(name, 32, "int", "float") for name in
          ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")),
        *(Register(f"xmm{n}", 128, "vec128", feature="sse") for n in range(16)),
        Register("mxcsr", 32, "int", "vector", "sse"),
        Register("orig_rax", 64, "int", feature="linux"),
        Register("fs_base", 64, "int", feature="segments"),
        Register("gs_base", 64, "int", feature="segments"),
    ),
    features={"core": ("org.gnu.gdb.i386.core", _EFLAGS), "sse": ("org.gnu.gdb.i386.sse", _VEC128),
              "linux": ("org.gnu.gdb.i386.linux", ""), "segments": ("org.gnu.gdb.i386.segments", "")},
    fp="rbp",
    watch_stops_before_access=False,
)

AARCH64 = Target(
    guest=guest_arch.get("aarch64"),
    gdb_arch="aarch64",
    registers=(
        *(Register(f"x{n}", 64) for n in range(31)),
        Register("sp", 64, "data_ptr"),
        Register("pc", 64, "code_ptr"),
        Register("cpsr", 32, "cpsr_flags"),
    ),
    features={"core": ("org.gnu.gdb.aarch64.core", _CPSR)},
    fp="x29",
    watch_stops_before_access=True,
)

TARGETS = {t.arch: t for t in (X86_64, AARCH64)}


def target_for(arch: str) -> Target:
    try:
        return TARGETS[guest_arch.get(arch).name]
    except KeyError:
        raise CannoliError(f"cannoli gdbserver debugs {' and '.join(TARGETS)} traces; this one is {arch}") from None
