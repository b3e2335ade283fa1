"""Re-execute a prefix of one recorded block execution in unicorn.

Memory: only the pages the block's code and its recorded accesses touch are
mapped.  Every load returns the recorded value of that access: the read hook
writes the recorded bytes (the `mem` rows of the instruction, matched by
address) into emulator memory just before unicorn reads them.  A load with no
recorded bytes is never guessed: that instruction's outputs become unknown.
Stores are compared with the recorded store values (when the storing
instruction's inputs are known) and a difference is counted as a mismatch.

Registers: the recorded entry registers are written; everything else the
emulator holds (vector registers, segment selectors, ...) is unknown, and the
known set follows the rule in dataflow.py.  An instruction with unknown inputs
(or one whose result comes from outside, e.g. cpuid or mrs) still runs, but the
registers around it are compared and whatever changed becomes unknown too, so
a write that capstone does not list cannot pass as known.  An instruction
unicorn cannot run (AVX, which unicorn's QEMU 5 lacks; a fault on an unmapped
address) is stepped over with its outputs unknown.  Such surprises are found
while running, so the block is run again with the registers compared around
that instruction (at most once per instruction of the block).

A rep-prefixed instruction runs iteration by iteration while recorded accesses
of it remain: QEMU 10 runs several iterations per execution of the
instruction, and the next recorded execution carries on with the rest.
"""

from __future__ import annotations

import ctypes
from collections import defaultdict
from dataclasses import dataclass, field

import unicorn
from unicorn.unicorn_py3.unicorn import uclib

from ..disasm import Disassembler
from .arches import KEEP, Arch, register_names
from .dataflow import Flow, block_flows, plain_known

PAGE = 4096
MAX_PAGES = 4096          # mapped data pages kept between blocks (16 MiB); then all are unmapped
MAX_CODE_CACHE = 1 << 16  # analysed blocks kept
UNKNOWN_BYTE = -1         # a recorded store whose value the recording lacks


@dataclass
class Code:
    """One recorded block, analysed once: instruction pcs, flows, ARM/Thumb."""

    pc: int
    code: bytes
    pcs: list[int]
    flows: list[Flow]
    thumb: bool
    index: dict[int, int]
    plans: dict = field(default_factory=dict)  # (entry registers, stop) -> plain_known(...)

    @property
    def end(self) -> int:
        return self.pc + len(self.code)


@dataclass(frozen=True)
class Access:
    n: int          # instruction index in the block
    addr: int
    size: int
    is_write: bool
    value: int | None


@dataclass
class Outcome:
    """Registers before instruction `stop` (known ones only), and what was seen on the way."""

    stop: int
    registers: dict[str, int]
    next_pc: int | None = None                   # emulated pc after the last instruction, if known
    store_mismatches: list[tuple[int, int]] = field(default_factory=list)   # (n, addr)
    unrecorded_loads: list[tuple[int, int]] = field(default_factory=list)   # (n, addr)
    failed: dict[int, str] = field(default_factory=dict)                    # n -> unicorn's error
    states: list[dict[str, int]] | None = None   # with trace=True: known registers before each instruction


class _Surprise(Exception):
    """An instruction without a register snapshot failed or loaded unrecorded memory: run again."""

    def __init__(self, n: int):
        self.n = n


class _RegisterFile:
    """Batch access to the recorded registers through unicorn's C API (uc_reg_{read,write}_batch):
    the Python binding's per-register type dispatch costs more than the emulation of a block."""

    def __init__(self, uc: unicorn.Uc, ids: list[int]):
        self._uch = uc._uch
        self.count = len(ids)
        self._ids = (ctypes.c_int * self.count)(*ids)
        self._values = (ctypes.c_uint64 * self.count)()
        self._ptrs = (ctypes.c_void_p * self.count)(*(ctypes.addressof(self._values) + 8 * k
                                                      for k in range(self.count)))

    def read(self) -> list[int]:
        ctypes.memset(self._values, 0, 8 * self.count)  # a 32-bit register fills only the low half
        if uclib.uc_reg_read_batch(self._uch, self._ids, self._ptrs, self.count) != unicorn.UC_ERR_OK:
            raise unicorn.UcError(unicorn.UC_ERR_ARG)
        return self._values[:]

    def write(self, values: dict[int, int]) -> None:
        """Set the registers at these positions; the others keep their values."""
        self.read()
        for k, value in values.items():
            self._values[k] = value
        if uclib.uc_reg_write_batch(self._uch, self._ids, self._ptrs, self.count) != unicorn.UC_ERR_OK:
            raise unicorn.UcError(unicorn.UC_ERR_ARG)


class Emulator:
    def __init__(self, a: Arch):
        self.arch = a
        self._names = register_names(a)
        self._ids = [a.regs[n] for n in a.regs] + ([a.flags.uc_id] if a.flags else [])
        self._slot = self.slot = {name: k for k, name in enumerate(self._names)}
        self._picks: dict[frozenset, tuple] = {}  # known set -> (names, slots) of the known GPRs
        self._disasm = Disassembler(a.name, detail=True)
        self._codes: dict[int, Code] = {}
        self._run: _Run | _PlainRun | None = None
        # two unicorn machines: adding or removing a code hook makes unicorn drop its translations,
        # so the watched runs (a Python call per instruction) have a machine of their own
        self._plain = self._machine(watched=False)
        self._watched = self._machine(watched=True)
        self._use(self._plain)

    def _machine(self, watched: bool) -> tuple:
        a = self.arch
        uc = unicorn.Uc(a.uc_arch, a.uc_mode)
        if a.cpu_model is not None:
            uc.ctl_set_cpu_model(a.cpu_model)
        uc.hook_add(unicorn.UC_HOOK_MEM_READ, self._on_read)
        uc.hook_add(unicorn.UC_HOOK_MEM_WRITE, self._on_write)
        uc.hook_add(unicorn.UC_HOOK_MEM_READ_UNMAPPED | unicorn.UC_HOOK_MEM_WRITE_UNMAPPED, self._on_unmapped)
        if watched:
            uc.hook_add(unicorn.UC_HOOK_CODE, self._on_code)
        return uc, _RegisterFile(uc, self._ids), set()

    def _use(self, machine: tuple) -> None:
        self.uc, self._file, self._mapped = machine

    # -- blocks ------------------------------------------------------------

    def cached(self, block_id: int) -> Code | None:
        return self._codes.get(block_id)

    def code(self, block_id: int, pc: int, code: bytes, sizes: list[int]) -> Code:
        cached = self._codes.get(block_id)
        if cached is None:
            if len(self._codes) >= MAX_CODE_CACHE:
                self._codes.clear()
            thumb = self._disasm.is_thumb(pc, code, sizes)
            pcs = [pc]
            for size in sizes:
                pcs.append(pcs[-1] + size)
            flows = block_flows(self.arch, self._disasm.capstone_for(pc, code, sizes, thumb), pc, code, sizes)
            cached = Code(pc, bytes(code), pcs, flows, thumb, {p: i for i, p in enumerate(pcs[:-1])})
            self._codes[block_id] = cached
        return cached

    # -- running -------------------------------------------------------------

    def run(self, code: Code, entry: dict[str, int], accesses: list[Access], stop: int,
            trace: bool = False, check_stores: bool = True) -> Outcome:
        """Registers before instruction `stop` (0 <= stop <= icount) of this execution of the block,
        from its entry registers and its recorded accesses (instruction index, in order).
        check_stores=False where the trace has no memory accesses (--no-mem) to compare with."""
        if stop > 0:
            fast = self._run_plain(code, entry, accesses, stop, check_stores, trace)
            if fast is not None:
                return fast
        snap: set[int] = set()
        while True:
            try:
                return self._run_once(code, entry, accesses, stop, trace, snap, check_stores)
            except _Surprise as surprise:
                snap.add(surprise.n)
            finally:
                self._run = None

    def _prepare(self, code: Code, entry, accesses) -> None:
        a = self.arch
        self._map(code, accesses)
        self.place(code.pc, code.code)
        slot = self._slot
        values = {slot[n]: v for n, v in entry.items() if n in slot}
        if a.flags and a.flags.name in entry:
            values[slot[a.flags.name]] = entry[a.flags.name] & a.flags.mask
        self._file.write(values)

    def _run_plain(self, code: Code, entry, accesses, stop, check_stores, trace) -> Outcome | None:
        """The common case, without a Python call per instruction: every instruction plain with known
        inputs, loads matched byte by byte in program order; with trace, one instruction per
        emu_start.  None: anything unexpected happened (the watched run does it again, and explains)."""
        key = (frozenset(entry), stop)
        knowns = code.plans.get(key, False)
        if knowns is False:
            knowns = code.plans[key] = plain_known(code.flows, frozenset(n for n in entry if n != "pc"), stop)
        if knowns is None:
            return None
        self._use(self._plain)
        self._prepare(code, entry, accesses)
        run = self._run = _PlainRun(self, code, accesses, check_stores)
        states = [] if trace else None
        try:
            for begin, count in ([(code.pcs[k], 1) for k in range(stop)] if trace else [(code.pc, stop)]):
                if trace:
                    states.append(_known_registers(self, code, entry, knowns[len(states)], len(states) - 1))
                self.uc.emu_start(begin | int(code.thumb), 0, count=count)
        except unicorn.UcError:
            # only the last instruction leaves the block: an error outside it is the fetch at its target
            if (self.uc.reg_read(self.arch.pc) & ~int(code.thumb)) in code.index:
                return None
        finally:
            self._run = None
        if run.surprised or run.unconsumed():
            return None
        out = Outcome(stop, _known_registers(self, code, entry, knowns[stop], stop - 1),
                      store_mismatches=run.store_mismatches, states=states)
        if stop == len(code.flows):
            out.next_pc = self.uc.reg_read(self.arch.pc)
        return out

    def _run_once(self, code: Code, entry, accesses, stop, trace, snap, check_stores) -> Outcome:
        self._use(self._watched)
        self._prepare(code, entry, accesses)
        known = {n for n in entry if n != "pc"}
        run = self._run = _Run(self, code, entry, accesses, stop, trace, snap, known, check_stores)
        start = code.pc
        while start is not None and stop > 0:
            try:
                self.uc.emu_start(start | int(code.thumb), 0)
                start = None
            except unicorn.UcError as exc:
                start = run.failed(exc)
        run.finish_current()
        out = Outcome(stop, run.known_registers(), store_mismatches=run.store_mismatches,
                      unrecorded_loads=run.unrecorded, failed=run.failures, states=run.states)
        if stop == len(code.flows) and run.last_inputs_known:
            out.next_pc = self.uc.reg_read(self.arch.pc)
        return out

    def place(self, addr: int, data: bytes) -> None:
        """Put bytes into emulator memory.  unicorn keeps translated code until told, so where the
        bytes change, its translations of them are dropped; where they do not, they are kept (a
        block translated once runs again without being translated again)."""
        if self.uc.mem_read(addr, len(data)) != data:
            self.uc.mem_write(addr, data)
            self.uc.ctl_remove_cache(addr, addr + len(data))

    def rep_done(self) -> bool:
        """The rep count register is 0: the instruction is about to leave its loop."""
        return self.arch.rep_count is not None and self.uc.reg_read(self.arch.regs[self.arch.rep_count]) == 0

    def read_all(self) -> dict[str, int]:
        return dict(zip(self._names, self._file.read()))

    def _map(self, code: Code, accesses: list[Access]) -> None:
        # and the page after: unicorn translates ahead, and an instruction after the block may cross into it
        pages = set(range(code.pc & ~(PAGE - 1), code.end + 16, PAGE))
        for acc in accesses:
            pages.update(range(acc.addr & ~(PAGE - 1), acc.addr + acc.size, PAGE))
        pages = {p for p in pages if p < 1 << self.arch.word_bits}
        missing = pages - self._mapped
        if len(self._mapped) + len(missing) > MAX_PAGES:
            for page in self._mapped:
                self.uc.mem_unmap(page, PAGE)  # drops the translations of its code too
            self._mapped.clear()
            missing = pages
        for page in missing:
            self.uc.mem_map(page, PAGE)
        self._mapped |= missing

    # -- hooks (unicorn calls them; they forward to the current run) --------

    def _on_code(self, uc, address, size, _):
        self._run.on_code(address)

    def _on_read(self, uc, access, address, size, value, _):
        self._run.on_read(address, size)

    def _on_write(self, uc, access, address, size, value, _):
        self._run.on_write(address, size, value)

    def _on_unmapped(self, uc, access, address, size, value, _) -> bool:
        # a page no recorded access touches: a load without a recorded value, a store the recording lacks
        self._run.on_unmapped(access == unicorn.UC_MEM_WRITE_UNMAPPED, address)
        return False


class _Run:
    """The state of one run of a block: current instruction, known registers, recorded bytes."""

    def __init__(self, emu: Emulator, code: Code, entry, accesses, stop, trace, snap, known, check_stores):
        self.emu, self.code, self.entry, self.stop = emu, code, entry, stop
        self.snap = snap
        self.known: set[str] = known
        self.cur: int | None = None
        self.last: int | None = None  # the last instruction that completed
        self.next = 0                 # the instruction that runs next if the block goes on
        self.cur_inputs_known = False
        self.snapshot: dict[str, int] | None = None
        self.last_inputs_known = False
        self.loads: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        self.stores: dict[int, dict[int, int]] = defaultdict(dict)
        self.remaining: dict[int, int] = defaultdict(int)  # recorded accesses of each instruction not yet matched
        self.check_stores = check_stores
        for acc in accesses:
            if acc.value is None:
                if acc.is_write:
                    self.stores[acc.n].update(dict.fromkeys(range(acc.addr, acc.addr + acc.size), UNKNOWN_BYTE))
                continue
            data = (acc.value & ((1 << (8 * acc.size)) - 1)).to_bytes(acc.size, "little")
            target = self.stores[acc.n] if acc.is_write else None
            for k, byte in enumerate(data):
                if target is not None:
                    target[acc.addr + k] = byte
                else:
                    self.loads[acc.n][acc.addr + k].append(byte)
            self.remaining[acc.n] += acc.size
        self.store_mismatches: list[tuple[int, int]] = []
        self.unrecorded: list[tuple[int, int]] = []
        self.failures: dict[int, str] = {}
        self.explained = False  # the error unicorn is about to raise is an access outside the recording
        self.tainted: set[int] = set()
        self.states: list[dict[str, int]] | None = [] if trace else None

    def on_code(self, address: int) -> None:
        i = self.code.index.get(address)
        if i is not None and i == self.cur and (self.remaining[i] > 0 or self.emu.rep_done()):
            # the next iteration of a rep instruction, or (count exhausted) its exit, which accesses nothing
            self.finish_current()
            self.start(i, record=False)
            return
        self.finish_current()
        if i is None or i != self.next or i >= self.stop:
            self.emu.uc.emu_stop()  # done, or the block's last instruction left it
            return
        self.start(i)

    def start(self, i: int, record: bool = True) -> None:
        flow = self.code.flows[i]
        self.cur = i
        self.next = i + 1
        self.cur_inputs_known = flow.inputs_known(self.known)
        if self.states is not None and record:
            self.states.append(self.known_registers())
        self.snapshot = None
        if not self.cur_inputs_known or flow.environment or i in self.snap:
            self.snapshot = self.emu.read_all()

    def finish_current(self) -> None:
        i = self.cur
        if i is None:
            return
        self.cur = None
        self.last = i
        ok = self.cur_inputs_known and i not in self.tainted
        self.known = self.code.flows[i].after(self.known, ok)
        if self.snapshot is not None:
            now = self.emu.read_all()
            self.known -= {name for name, value in now.items() if self.snapshot.get(name) != value}
        elif not ok:
            raise _Surprise(i)
        if i == len(self.code.flows) - 1:
            self.last_inputs_known = ok

    def failed(self, exc: unicorn.UcError) -> int | None:
        """Unicorn stopped with an error: step over the instruction it was at; where to go on from."""
        pc = self.emu.uc.reg_read(self.emu.arch.pc) & ~int(self.code.thumb)
        i = self.code.index.get(pc)
        if i is None or i != (self.cur if self.cur is not None else self.next) or i >= self.stop:
            self.finish_current()
            return None  # left the block (its branch target is not mapped): the run is over
        if self.cur != i:
            self.start(i)
        self.tainted.add(i)
        if self.cur_inputs_known and not self.explained:
            self.failures[i] = str(exc)
        self.explained = False
        self.finish_current()
        self.known -= self.code.flows[i].touches  # what it would have written is not known
        return self.code.pcs[i + 1] if i + 1 < self.stop else None

    def on_read(self, address: int, size: int) -> None:
        i = self.cur
        recorded = self.loads.get(i) if i is not None else None
        if recorded is None or any(not recorded.get(address + k) for k in range(size)):
            if i is not None:
                self.tainted.add(i)
                if self.cur_inputs_known:
                    self.unrecorded.append((i, address))
            return
        data = bytes(recorded[address + k].pop(0) for k in range(size))
        self.remaining[i] -= size
        self.emu.place(address, data)

    def on_unmapped(self, is_write: bool, address: int) -> None:
        i = self.cur
        if i is None:
            return
        self.tainted.add(i)
        self.explained = True
        flow = self.code.flows[i]
        if not self.cur_inputs_known or flow.environment:
            return
        if not is_write:
            self.unrecorded.append((i, address))
        elif self.check_stores and not (flow.atomic or flow.store_unrecorded):
            self.store_mismatches.append((i, address))

    def on_write(self, address: int, size: int, value: int) -> None:
        i = self.cur
        if i is None:
            return
        recorded = self.stores.get(i, {})
        self.remaining[i] -= size
        flow = self.code.flows[i]
        if (not (self.check_stores and self.cur_inputs_known) or flow.environment or flow.atomic
                or flow.store_unrecorded or size > 8):
            return
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        got = [recorded.get(address + k) for k in range(size)]
        if UNKNOWN_BYTE not in got and got != list(data):
            self.store_mismatches.append((i, address))

    def known_registers(self) -> dict[str, int]:
        return _known_registers(self.emu, self.code, self.entry, self.known, self.last)


def _known_registers(emu: Emulator, code: Code, entry, known, last: int | None) -> dict[str, int]:
    """The known recorded registers, as unicorn holds them now; the flags register with the bits
    unicorn does not compute from block entry (or from the last instruction, arches.Flags)."""
    a = emu.arch
    values = emu._file.read()
    pick = emu._picks.get(known) if isinstance(known, frozenset) else None
    if pick is None:
        names = [name for name in a.regs if name in known]
        pick = (names, [emu.slot[name] for name in names])
        if isinstance(known, frozenset):
            emu._picks[known] = pick
    out = dict(zip(pick[0], [values[k] for k in pick[1]]))
    flags = a.flags
    if flags and flags.name in known and flags.name in entry:
        value = (entry[flags.name] & ~flags.mask) | (values[emu.slot[flags.name]] & flags.mask)
        extra = code.flows[last].flags_extra if last is not None else KEEP
        if extra is None:
            return out  # unknown
        if extra != KEEP:
            value = (value & ~flags.extra) | extra
        out[flags.name] = value
    return out


class _PlainRun:
    """Memory for a plain run: each recorded byte is a queue, consumed in program order."""

    def __init__(self, emu: Emulator, code: Code, accesses: list[Access], check_stores: bool):
        self.emu = emu
        self.flows = code.flows
        self.loads: dict[int, list[int]] = defaultdict(list)
        self.stores: dict[int, list[tuple[int, int]]] = defaultdict(list)
        self.check_stores = check_stores
        self.surprised = False
        self.store_mismatches: list[tuple[int, int]] = []
        for acc in accesses:
            if acc.value is None:
                self.surprised = True  # a value the recording lacks: the watched run decides
                return
            data = (acc.value & ((1 << (8 * acc.size)) - 1)).to_bytes(acc.size, "little")
            for k, byte in enumerate(data):
                if acc.is_write:
                    self.stores[acc.addr + k].append((byte, acc.n))
                else:
                    self.loads[acc.addr + k].append(byte)

    def on_read(self, address: int, size: int) -> None:
        queues = [self.loads.get(address + k) for k in range(size)]
        if not all(queues):
            self.surprised = True
            self.emu.uc.emu_stop()
            return
        self.emu.place(address, bytes(q.pop(0) for q in queues))

    def on_write(self, address: int, size: int, value: int) -> None:
        if size > 8:
            self.surprised = True  # compared per instruction by the watched run
            return
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        for k, byte in enumerate(data):
            queue = self.stores.get(address + k)
            if not queue:
                self.surprised = True
                return
            recorded, n = queue.pop(0)
            if self.check_stores and recorded != byte and not self.flows[n].atomic:
                self.store_mismatches.append((n, address))
                return

    def on_unmapped(self, is_write: bool, address: int) -> None:
        self.surprised = True

    def unconsumed(self) -> bool:
        return any(self.loads.values()) or any(self.stores.values())
