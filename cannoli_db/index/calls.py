"""Calls and returns, reconstructed from the executed blocks alone: the `calls` table.

No registers are needed (QEMU 7.2 traces have none).  Calls and returns end
their blocks, so each block's last instruction is classified once with
capstone (`classify_blocks`: call, return, direct or indirect jump, per
architecture), and the C walker (qemu_patches/call_stack.c, which documents the
rules: unwinding, longjmp, signal frames) follows each thread's executions in
position order with one stack per thread.  A new thread, and a fork child,
start with an empty stack.

Two ways in:

    calls_table(arch, code, threads)     # one call: every thread's arrays -> Arrow table
    walker = CallWalker(arch, code)      # streaming: feed each thread's executions in order,
    walker.start(key, tid, sigreturns)   #   batch by batch, in bounded memory;
    walker.feed(key, idx, block_id, icount)
    walker.take()                        #   the frames that have left their stacks so far
    walker.finish()                      #   end every thread: the rest

Rows are one per frame (docs/schema.md, `calls`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import capstone
import cffi
import numpy as np
import pyarrow as pa

from .. import arch as guest_arch
from .. import native, syscall_tables
from ..disasm import Disassembler
from ..errors import CannoliError

# block kinds (qemu_patches/call_stack.c has the same numbers)
NONE, CALL, RET, JUMP, INDIRECT, UNKNOWN = range(6)
FRAME_KINDS = ("call", "signal")
SIGRETURN_NAMES = ("rt_sigreturn", "sigreturn")
_NO_TARGET = 0

_ffi = cffi.FFI()
_ffi.cdef("""
typedef struct cn_calls cn_calls;
typedef struct cn_calls_thread cn_calls_thread;
cn_calls *cn_calls_new(uint32_t n_blocks, const uint8_t *kind, const uint8_t *site_back, const uint16_t *n_insns,
                       const uint64_t *site_pc, const uint64_t *ret_addr, const uint64_t *target,
                       const uint64_t *end_pc, const int64_t *insn_first, const uint64_t *insn_pc, uint64_t n_insn_pc);
void cn_calls_free(cn_calls *w);
cn_calls_thread *cn_calls_thread_new(uint32_t tid, const uint64_t *sigreturns, uint64_t n);
uint64_t cn_calls_thread_dropped(const cn_calls_thread *t);
int cn_calls_feed(cn_calls *w, cn_calls_thread *t, const uint64_t *idx, const uint32_t *block, const uint16_t *icount,
                  uint64_t n, const uint64_t *sp_idx, const uint64_t *sp_value, uint64_t n_sp);
int cn_calls_thread_end(cn_calls *w, cn_calls_thread *t);
uint64_t cn_calls_pending(const cn_calls *w);
void cn_calls_take(cn_calls *w, uint64_t *const u64[8], uint32_t *tid, uint32_t *depth, uint8_t *kind,
                   uint8_t *nulls);
""")
_lib = None

_U64_COLUMNS = ("call_idx", "ret_idx", "end_idx", "caller_pc", "callee_pc", "parent", "sp", "insns")
_NULL_BITS = {"ret_idx": 1, "parent": 4, "sp": 8, "callee_pc": 16, "insns": 32}

SCHEMA = pa.schema([
    ("tid", pa.uint32()), ("call_idx", pa.uint64()), ("ret_idx", pa.uint64()), ("end_idx", pa.uint64()),
    ("depth", pa.uint32()), ("parent", pa.uint64()), ("kind", pa.dictionary(pa.int8(), pa.string())),
    ("caller_pc", pa.uint64()),
    ("callee_pc", pa.uint64()), ("insns", pa.uint64()), ("sp", pa.uint64()),
])


def _library():
    global _lib
    if _lib is None:
        _lib = _ffi.dlopen(str(native.call_stack_path()))
    return _lib


@dataclass
class BlockCode:
    """Translated blocks: id, first pc and instruction count per block, and every block's
    instruction sizes and bytes back to back in the same order."""

    block_id: np.ndarray
    pc: np.ndarray
    n_insns: np.ndarray
    insn_size: np.ndarray  # uint8, sum(n_insns) entries
    code: bytes            # sum(insn_size) bytes

    def __post_init__(self):
        self.block_id = np.asarray(self.block_id, np.int64)
        self.pc = np.asarray(self.pc, np.uint64)
        self.n_insns = np.asarray(self.n_insns, np.int64)
        self.insn_size = np.asarray(self.insn_size, np.uint8)
        if not (len(self.block_id) == len(self.pc) == len(self.n_insns)):
            raise ValueError("block ids, pcs and instruction counts differ in length")
        if int(self.n_insns.sum()) != len(self.insn_size) or int(self.insn_size.sum(dtype=np.int64)) != len(self.code):
            raise ValueError("block instruction counts, sizes and bytes disagree")
        if len(self.block_id) and (self.block_id.min() < 0 or self.block_id.max() >= 1 << 32):
            raise ValueError("block ids must be 0 .. 2^32-1")

    @classmethod
    def from_sections(cls, rows) -> BlockCode:
        """From per-packet (BLOCK, INSN_SIZE, INSN_BYTES) section copies (positions.BlockTable.rows)."""
        rows = list(rows)
        if not rows:
            return cls(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), b"")
        return cls(np.concatenate([b["block_id"] for b, _, _ in rows]), np.concatenate([b["pc"] for b, _, _ in rows]),
                   np.concatenate([b["n_insns"] for b, _, _ in rows]), np.concatenate([s for _, s, _ in rows]),
                   b"".join(bytes(c) for _, _, c in rows))

    @classmethod
    def from_database(cls, con) -> BlockCode:
        """From an index's `blocks` and `block_insns` tables."""
        blocks = con.execute("SELECT block_id, pc, icount, bytes FROM blocks ORDER BY block_id").fetchnumpy()
        sizes = con.execute("SELECT size FROM block_insns ORDER BY block_id, n").fetchnumpy()["size"]
        return cls(blocks["block_id"], blocks["pc"], blocks["icount"], np.asarray(sizes, np.uint8),
                   b"".join(blocks["bytes"]))


@dataclass
class BlockFacts:
    """What the walker needs of each block, indexed by block id."""

    kind: np.ndarray       # NONE, CALL, ... of the block's control transfer
    site_back: np.ndarray  # the call/return is this many instructions before the last (1: a MIPS delay slot)
    site_pc: np.ndarray    # pc of the call/return/jump instruction
    ret_addr: np.ndarray   # where a call returns to
    target: np.ndarray     # a direct call or jump's target (0: none)
    end_pc: np.ndarray     # the pc after the block
    n_insns: np.ndarray
    insn_first: np.ndarray  # block id -> index of its first instruction in insn_pc
    insn_pc: np.ndarray


def classify_blocks(arch: str, code: BlockCode) -> BlockFacts:
    """Classify each block's control transfer with capstone, once per block id."""
    n = int(code.block_id.max()) + 1 if len(code.block_id) else 1
    kind = np.full(n, UNKNOWN, np.uint8)
    site_back = np.zeros(n, np.uint8)
    site_pc, ret_addr, target, end_pc = (np.zeros(n, np.uint64) for _ in range(4))
    n_insns = np.zeros(n, np.uint16)
    insn_first = np.zeros(n, np.int64)
    offsets = np.concatenate([[0], np.cumsum(code.insn_size, dtype=np.int64)])
    insn_pc = code.pc[np.repeat(np.arange(len(code.pc)), code.n_insns)] + \
        (offsets[:-1] - np.repeat(offsets[np.cumsum(code.n_insns) - code.n_insns], code.n_insns)).astype(np.uint64)
    firsts = np.cumsum(code.n_insns) - code.n_insns
    guest = guest_arch.get(arch)
    rule = _RULES[guest.name]
    disassembler = Disassembler(arch, detail=True)
    blocks = []
    for k, bid in enumerate(code.block_id.tolist()):
        first, count = int(firsts[k]), int(code.n_insns[k])
        insn_first[bid], n_insns[bid] = first, count
        start, stop = int(offsets[first]), int(offsets[first + count])
        end_pc[bid] = int(code.pc[k]) + stop - start
        blocks.append((bid, int(code.pc[k]), code.code[start:stop], code.insn_size[first: first + count].tolist()))
    thumb = [None] * len(blocks)
    if guest.capstone_thumb:
        thumb = disassembler.arm_modes(code.pc, [disassembler.thumb_of(pc, c, s) if s else True
                                                 for _, pc, c, s in blocks])
    for (bid, pc, block_code, sizes), is_thumb in zip(blocks, thumb):
        if not sizes:
            continue
        cs = disassembler.capstone_for(pc, block_code, sizes, is_thumb)
        kind[bid], site_back[bid], site_pc[bid], ret_addr[bid], target[bid] = _classify_block(
            guest, rule, cs, pc, block_code, sizes)
    return BlockFacts(kind, site_back, site_pc, ret_addr, target, end_pc, n_insns, insn_first, insn_pc)


def _classify_block(guest: guest_arch.Arch, rule, cs: capstone.Cs, pc: int, code: bytes, sizes: list[int]):
    back = 1 if guest.delay_slot and len(sizes) >= 2 else 0
    for site_back in ((back, 0) if back else (0,)):
        n = len(sizes) - 1 - site_back
        at = pc + sum(sizes[:n])
        insn = next(cs.disasm(code[at - pc: at - pc + sizes[n]], at, 1), None)
        if insn is None or insn.size != sizes[n]:
            return UNKNOWN, 0, at, 0, 0
        kind, target = rule(insn)
        if kind != NONE or site_back == 0:
            # the return address is after the call (and after its delay slot)
            ret_addr = at + insn.size + (4 if guest.delay_slot else 0) if kind == CALL else 0
            return kind, site_back, at, ret_addr, target


def _imm(insn) -> int:
    """The last immediate operand (a branch target), 0 if none."""
    for op in reversed(insn.operands):
        if op.type == capstone.CS_OP_IMM:
            return op.imm & 0xFFFF_FFFF_FFFF_FFFF
    return _NO_TARGET


def _x86(insn):
    if insn.group(capstone.CS_GRP_CALL):
        return CALL, _imm(insn)
    if insn.group(capstone.CS_GRP_RET):
        return RET, 0
    if insn.group(capstone.CS_GRP_JUMP):
        target = _imm(insn)
        return (JUMP, target) if target else (INDIRECT, 0)
    return NONE, 0


_A64_CALLS = {"bl", "blr", "blraa", "blraaz", "blrab", "blrabz"}
_A64_RETURNS = {"ret", "retaa", "retab"}
_A64_INDIRECT = {"br", "braa", "braaz", "brab", "brabz"}
_A64_JUMPS = {"b", "cbz", "cbnz", "tbz", "tbnz"}


def _aarch64(insn):
    m = insn.mnemonic
    if m in _A64_CALLS:
        return CALL, _imm(insn)
    if m in _A64_RETURNS:
        return RET, 0
    if m in _A64_INDIRECT:
        return INDIRECT, 0
    if m in _A64_JUMPS or m.startswith("b."):
        return JUMP, _imm(insn)
    return NONE, 0


def _arm(insn):
    from capstone import arm

    if insn.id in (arm.ARM_INS_BL, arm.ARM_INS_BLX):
        return CALL, _imm(insn)
    if insn.id in (arm.ARM_INS_B, arm.ARM_INS_CBZ, arm.ARM_INS_CBNZ):
        return JUMP, _imm(insn)
    if insn.id in (arm.ARM_INS_TBB, arm.ARM_INS_TBH):
        return INDIRECT, 0
    regs = [op.reg for op in insn.operands if op.type == capstone.CS_OP_REG]
    if insn.id == arm.ARM_INS_BX:
        return (RET, 0) if regs[:1] == [arm.ARM_REG_LR] else (INDIRECT, 0)
    if arm.ARM_REG_PC not in insn.regs_access()[1]:
        return NONE, 0
    pops = insn.id == arm.ARM_INS_POP or (insn.id == arm.ARM_INS_LDM and regs[:1] == [arm.ARM_REG_SP]) or (
        insn.id == arm.ARM_INS_LDR and any(op.type == capstone.CS_OP_MEM and op.mem.base == arm.ARM_REG_SP
                                           for op in insn.operands))
    if pops or (insn.id == arm.ARM_INS_MOV and regs[1:2] == [arm.ARM_REG_LR]):
        return RET, 0
    return INDIRECT, 0


_RV_BRANCHES = {"beq", "bne", "blt", "bge", "bltu", "bgeu", "beqz", "bnez", "blez", "bgez", "bltz", "bgtz", "bgt",
                "ble", "bgtu", "bleu", "c.beqz", "c.bnez"}


def _riscv(insn):
    # capstone 5 marks every RISC-V jump as a call: decide by the link register (rd) instead
    m = insn.mnemonic
    regs = [insn.reg_name(op.reg) for op in insn.operands if op.type == capstone.CS_OP_REG]
    relative = (insn.address + _imm(insn)) & 0xFFFF_FFFF_FFFF_FFFF  # capstone gives RISC-V offsets
    if m in ("jal", "c.jal"):
        return (CALL, relative) if m == "c.jal" or not regs or regs[0] == "ra" else (JUMP, relative)
    if m in ("j", "c.j") or m in _RV_BRANCHES:
        return JUMP, relative
    if m == "c.jalr":
        return CALL, 0
    if m == "jalr":
        if len(regs) == 1 or regs[0] == "ra":
            return CALL, 0
        return (RET, 0) if regs[0] == "zero" and regs[1:2] == ["ra"] else (INDIRECT, 0)
    if m == "ret":
        return RET, 0
    if m in ("jr", "c.jr"):
        return (RET, 0) if regs[:1] == ["ra"] else (INDIRECT, 0)
    return NONE, 0


_MIPS_CALLS = {"jal", "bal", "bgezal", "bltzal", "jalx"}


def _mips(insn):
    m = insn.mnemonic
    regs = [insn.reg_name(op.reg) for op in insn.operands if op.type == capstone.CS_OP_REG]
    if m in _MIPS_CALLS:
        return CALL, _imm(insn)
    if m in ("jalr", "jalr.hb"):
        return (CALL, 0) if len(regs) == 1 or regs[0] == "ra" else (INDIRECT, 0)
    if m in ("jr", "jr.hb"):
        return (RET, 0) if regs[:1] == ["ra"] else (INDIRECT, 0)
    if m == "j" or insn.group(capstone.CS_GRP_BRANCH_RELATIVE):
        return JUMP, _imm(insn)
    return NONE, 0


# by cannoli_db.arch name
_RULES = {"x86_64": _x86, "aarch64": _aarch64, "arm": _arm, "riscv64": _riscv, "mipsel": _mips}


def sigreturn_numbers(arch: str) -> set[int]:
    """The syscall numbers that leave a signal handler on this architecture."""
    return {nr for nr, name in syscall_tables.names(arch).items() if name in SIGRETURN_NAMES}


class CallWalker:
    """The C walker over one trace's blocks; threads are fed independently, each in position order."""

    def __init__(self, arch: str, code: BlockCode):
        self.facts = classify_blocks(arch, code)
        f = self.facts  # the C side reads these arrays in place: they live as long as the walker
        lib = _library()
        ptr = _ffi.from_buffer
        self._w = lib.cn_calls_new(len(f.kind), ptr("uint8_t[]", f.kind), ptr("uint8_t[]", f.site_back),
                                   ptr("uint16_t[]", f.n_insns), ptr("uint64_t[]", f.site_pc),
                                   ptr("uint64_t[]", f.ret_addr), ptr("uint64_t[]", f.target),
                                   ptr("uint64_t[]", f.end_pc), ptr("int64_t[]", f.insn_first),
                                   ptr("uint64_t[]", f.insn_pc), len(f.insn_pc))
        if self._w == _ffi.NULL:
            raise MemoryError("the call walker could not allocate its state")
        self._threads: dict = {}
        self.dropped = 0  # calls deeper than the walker keeps (call_stack.c: MAX_DEPTH)

    def start(self, key, tid: int, sigreturns=()) -> None:
        """Begin a thread (key: anything hashable, e.g. (pid, tid)); sigreturns: its rt_sigreturn positions."""
        if key in self._threads:
            raise ValueError(f"thread {key} was already started")
        positions = np.ascontiguousarray(np.sort(np.asarray(sigreturns, np.uint64)))
        t = _library().cn_calls_thread_new(tid, _ffi.from_buffer("uint64_t[]", positions), len(positions))
        if t == _ffi.NULL:
            raise MemoryError("the call walker could not allocate a thread")
        self._threads[key] = t

    def feed(self, key, idx, block_id, icount, sp_idx=None, sp_value=None) -> None:
        """The thread's next executions (position, block id, instructions that ran), in position order,
        and optionally its stack pointer changes (position of the block entry, value) up to them."""
        idx = np.ascontiguousarray(idx, np.uint64)
        block_id = np.ascontiguousarray(block_id, np.uint32)
        icount = np.ascontiguousarray(icount, np.uint16)
        sp_idx = np.ascontiguousarray(np.zeros(0) if sp_idx is None else sp_idx, np.uint64)
        sp_value = np.ascontiguousarray(np.zeros(0) if sp_value is None else sp_value, np.uint64)
        if not (len(idx) == len(block_id) == len(icount)) or len(sp_idx) != len(sp_value):
            raise ValueError("execution (or sp) arrays differ in length")
        ptr = _ffi.from_buffer
        status = _library().cn_calls_feed(self._w, self._threads[key], ptr("uint64_t[]", idx),
                                          ptr("uint32_t[]", block_id), ptr("uint16_t[]", icount), len(idx),
                                          ptr("uint64_t[]", sp_idx), ptr("uint64_t[]", sp_value), len(sp_idx))
        self._check(status, key)

    def end(self, key) -> None:
        """The thread is done: its frames still open become rows that end at its last position."""
        t = self._threads.pop(key)
        lib = _library()
        self.dropped += lib.cn_calls_thread_dropped(t)
        self._check(lib.cn_calls_thread_end(self._w, t), key)

    def take(self) -> pa.Table:
        """The frames that left their stacks since the last take, as rows of `calls` (unsorted)."""
        lib = _library()
        n = lib.cn_calls_pending(self._w)
        cols = {name: np.empty(n, np.uint64) for name in _U64_COLUMNS}
        cols.update(tid=np.empty(n, np.uint32), depth=np.empty(n, np.uint32), kind=np.empty(n, np.int8),
                    nulls=np.empty(n, np.uint8))
        if n:
            ptr = _ffi.from_buffer
            u64 = _ffi.new("uint64_t *[8]", [_ffi.cast("uint64_t *", ptr(cols[name])) for name in _U64_COLUMNS])
            lib.cn_calls_take(self._w, u64, ptr("uint32_t[]", cols["tid"]), ptr("uint32_t[]", cols["depth"]),
                              _ffi.cast("uint8_t *", ptr(cols["kind"])), ptr("uint8_t[]", cols["nulls"]))
        return _arrow(cols)

    def finish(self) -> pa.Table:
        for key in list(self._threads):
            self.end(key)
        rows = self.take()
        _library().cn_calls_free(self._w)
        self._w = _ffi.NULL
        return rows

    @staticmethod
    def _check(status: int, key) -> None:
        if status == -1:
            raise CannoliError(f"thread {key}: an execution names a block that has no definition, or runs "
                               f"more instructions than its block has")
        if status == -2:
            raise MemoryError("the call walker ran out of memory for its rows")


def _arrow(cols: dict) -> pa.Table:
    """Arrow columns over the numpy arrays (no copies but the null masks); kind stays dictionary-coded."""
    def column(name):
        bit = _NULL_BITS.get(name)
        return pa.array(cols[name], mask=None if bit is None else (cols["nulls"] & bit) != 0)

    arrays = {name: column(name) for name in SCHEMA.names if name != "kind"}
    arrays["kind"] = pa.DictionaryArray.from_arrays(pa.array(cols["kind"]), pa.array(FRAME_KINDS))
    return pa.table([arrays[name] for name in SCHEMA.names], schema=SCHEMA)


@dataclass
class ThreadExecs:
    """One thread's executions in position order (and, if the trace has them, its sp changes)."""

    tid: int
    idx: np.ndarray
    block_id: np.ndarray
    icount: np.ndarray
    sigreturns: np.ndarray | tuple = ()
    sp_idx: np.ndarray | None = None
    sp_value: np.ndarray | None = None
    key: object = None  # distinguishes threads that share a tid (default: the tid)


def calls_table(arch: str, code: BlockCode, threads: Iterable[ThreadExecs]) -> pa.Table:
    """The `calls` rows of every thread, thread by thread, in the order frames left their stacks."""
    walker = CallWalker(arch, code)
    parts = []
    for t in threads:
        key = t.tid if t.key is None else t.key
        walker.start(key, t.tid, t.sigreturns)
        walker.feed(key, t.idx, t.block_id, t.icount, t.sp_idx, t.sp_value)
        walker.end(key)
        parts.append(walker.take())
    parts.append(walker.finish())
    return pa.concat_tables(parts)



class InOrder:
    """Feeds a CallWalker from packets that may arrive out of order: each thread's executions are
    handed over in exec-ordinal order (exec_first, docs/format.md section 7), the rest wait."""

    def __init__(self, walker: CallWalker, sigreturns: dict):
        self.walker = walker
        self._sigreturns = sigreturns  # thread key -> its rt_sigreturn positions
        self._next: dict = {}          # thread key -> the exec ordinal it needs next
        self._waiting: dict = {}       # thread key -> {exec_first: feed arguments}

    def add(self, key, tid: int, exec_first: int, idx, block_id, icount, sp_idx, sp_value) -> None:
        """One packet's executions (and sp changes); a packet without executions only brings sp changes."""
        if key not in self._next:
            self.walker.start(key, tid, self._sigreturns.get(key, ()))
            self._next[key] = 0
        waiting = self._waiting.setdefault(key, {})
        batch = waiting.setdefault(exec_first, [[], [], [], [], []])
        for part, values in zip(batch, (idx, block_id, icount, sp_idx, sp_value)):
            part.append(np.asarray(values))
        while self._next[key] in waiting and sum(len(a) for a in waiting[self._next[key]][0]):
            self._feed(key, waiting.pop(self._next[key]))

    def _feed(self, key, batch) -> None:
        idx, block_id, icount, sp_idx, sp_value = (np.concatenate(part) for part in batch)
        order = np.argsort(sp_idx, kind="stable")
        self.walker.feed(key, idx, block_id, icount, sp_idx[order], sp_value[order])
        self._next[key] += len(idx)

    def finish(self) -> pa.Table:
        """Feed what still waits (after a gap: a damaged or missing chunk) in order, end every thread."""
        for key, waiting in self._waiting.items():
            for first in sorted(waiting):
                self._feed(key, waiting[first])
        self._waiting.clear()
        return self.walker.finish()
