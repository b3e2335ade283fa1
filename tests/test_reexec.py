"""Re-execution (cannoli_db.reexec): exact registers at every instruction.

Against the guest's own output: tests/guests/reexec.c computes a value from 8
random bytes the kernel wrote (no file holds them) through a chain of
arithmetic in the middle of one block, and prints it; Trace.registers_at at
the labelled instructions (ELF symbol table) must give exactly that.  Against
the recording itself: `cannoli check-registers` re-executes every block of
whole traces (threads, signals, forks, libc's string functions) and compares
with the next recorded block entry -- 0 mismatches.  And, with hypothesis,
random straight-line blocks of x86_64 and aarch64 arithmetic against a Python
model of the instructions, and the decoding of register names.
"""

from __future__ import annotations

import itertools
import json

import capstone
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cannoli_db import Trace
from cannoli_db.reexec.arches import ARCHES
from cannoli_db.reexec.emulator import Access, Emulator

from .conftest import qemu_under_test, read_meta, run_cannoli, symbol

MASK = (1 << 64) - 1
RESULT_REG = {"x86_64": "rax", "aarch64": "x0"}


@pytest.fixture(scope="module")
def qemu10():
    return qemu_under_test("10")


@pytest.fixture(scope="module")
def recorded10(guest, cross_guest, qemu10, tmp_path_factory):
    """recorded10(arch, name, *args) -> (program, trace, stdout), recorded once with the built QEMU 10."""
    cache = {}

    def get(arch, name, *args):
        key = (arch, name, args)
        if key not in cache:
            program = guest(name) if arch == "x86_64" else cross_guest(arch, name)
            trace = tmp_path_factory.mktemp("reexec") / f"{name}-{arch}.cannoli"
            proc = run_cannoli("record", "-o", trace, "--qemu", qemu10.bin_dir, program, *args)
            assert proc.returncode == 0 and "indexed" in proc.stderr, proc.stderr
            cache[key] = (program, trace, proc.stdout)
        return cache[key]

    return get


def chain(seed: int) -> tuple[int, int]:
    """reexec.c's arithmetic, modelled independently: (value at chain_mid, value at chain_end)."""
    m = (seed * 0x9E3779B97F4A7C15 + 0x345) & MASK
    m ^= m >> 7
    return m, (3 * m + 7 - 0x55) & MASK


def position_of(t: Trace, pc: int) -> int:
    (idx,) = t.sql("SELECT min(idx) FROM insns WHERE pc = $p", {"p": pc}).rows[0]
    assert idx is not None, f"{pc:#x} never ran"
    return idx


def block_start(t: Trace, idx: int) -> int:
    return t.sql("SELECT max(idx) FROM exec WHERE idx <= $i", {"i": idx}).rows[0][0]


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_registers_in_the_middle_of_a_block_are_what_the_guest_computed(recorded10, arch):
    program, trace, stdout = recorded10(arch, "reexec")
    seed, mid, end = (int(word, 16) for word in stdout.split())
    assert (mid, end) == chain(seed)  # the guest computed what the model says
    reg = RESULT_REG[arch]
    with Trace.open(trace) as t:
        for label, value in (("chain_mid", mid), ("chain_end", end)):
            pc, _ = symbol(program, label)
            at = position_of(t, pc)
            assert at > block_start(t, at) + 3  # inside a block: not a recorded entry
            regs = t.registers_at(at)
            assert regs[reg] == value and regs["pc"] == pc
            # the recorded block entry alone does not have it
            entry = {r["reg"]: r["value"] for r in t.query("registers_at", at=at).dicts()}
            assert entry[reg] != value


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_a_load_is_answered_by_the_recorded_value_not_the_file(recorded10, arch):
    # seed is in .bss (zero in the file); the kernel wrote random bytes there, and the chain loads it first
    program, trace, stdout = recorded10(arch, "reexec")
    seed = int(stdout.split()[0], 16)
    seed_addr, _ = symbol(program, "seed")
    with Trace.open(trace) as t:
        (load_idx,) = t.sql("SELECT min(idx) FROM mem WHERE addr = $a AND NOT is_write",
                            {"a": seed_addr}).rows[0]
        assert seed != 0 and t.registers_at(load_idx + 1)[RESULT_REG[arch]] == seed


def test_replay_and_tenet_show_the_value_where_it_is_computed(recorded10, tmp_path):
    program, trace, stdout = recorded10("x86_64", "reexec")
    _, mid, _ = (int(word, 16) for word in stdout.split())
    pc, _ = symbol(program, "chain_mid")
    with Trace.open(trace) as t:
        at = position_of(t, pc)
    proc = run_cannoli("replay", trace, "--range", f"{at - 1}:+2", "--format", "json")
    before, step = [json.loads(line) for line in proc.stdout.splitlines()]
    assert step["pc"] == pc and step["regs"]["rax"] == mid  # changed by the instruction before
    assert before["regs"]["rax"] != mid
    out = tmp_path / "reexec.tenet"
    assert run_cannoli("export", trace, "--format", "tenet", "-o", out).returncode == 0
    (line,) = [line for line in out.read_text().splitlines() if f"rip={pc:#x}" in line]
    assert f"rax={mid:#x}," in line


@pytest.mark.parametrize("arch, name, args", [
    ("x86_64", "registers", ()), ("x86_64", "reexec", ()), ("x86_64", "threads", ("4", "2000")),
    ("x86_64", "crash", ("handled",)), ("x86_64", "heap", ()),
    ("aarch64", "registers", ()), ("aarch64", "reexec", ()), ("aarch64", "threads", ("4", "2000")),
])
def test_check_registers_finds_no_mismatch_over_whole_traces(recorded10, arch, name, args):
    _, trace, _ = recorded10(arch, name, *args)
    proc = run_cannoli("check-registers", trace, "--format", "json", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    counts = read_meta(trace)["counts"]
    # every block the recorder counted was re-executed; each is compared one way or another
    assert result["blocks"] == counts["blocks_executed"]
    assert result["compared"] + result["syscall_blocks"] + result["cut_short"] + result["last_blocks"] \
        == result["blocks"]
    assert result["syscall_blocks"] == counts["syscalls"]
    assert result["registers_compared"] > 10 * result["compared"]  # most registers are known at block end
    assert result["total_mismatches"] == 0, result["examples"]
    if name == "crash":
        assert result["cut_short"] > 0  # the handled faults
    info = run_cannoli("info", trace).stdout
    assert f"{result['blocks']:,} blocks, 0 mismatches" in info


def test_check_over_worker_ranges_adds_up_to_one_range(recorded10):
    _, trace, _ = recorded10("x86_64", "threads", "4", "2000")
    one, two = (json.loads(run_cannoli("check-registers", trace, "--format", "json", "--workers", w).stdout)
                for w in ("1", "2"))
    assert two["workers"] == 2
    for key in ("blocks", "compared", "syscall_blocks", "registers_compared", "mismatches", "unknown_at_end"):
        assert one[key] == two[key], key


def test_check_registers_refuses_a_trace_without_registers(recorded):
    trace, _, _ = recorded("known_stores")  # QEMU 7.2
    proc = run_cannoli("check-registers", trace)
    assert proc.returncode == 1 and "has no registers" in proc.stderr and "Traceback" not in proc.stderr


# -- the emulator on hand-made blocks ------------------------------------------

_ids = itertools.count(1)


_emulators: dict[str, Emulator] = {}


def run_block(arch: str, code: bytes, sizes: list[int], entry: dict, accesses=(), stop=None, trace=False):
    if arch not in _emulators:
        _emulators[arch] = Emulator(ARCHES[arch])
    e = _emulators[arch]
    block = e.code(next(_ids), 0x400000, code, sizes)
    return e.run(block, dict(entry), list(accesses), len(sizes) if stop is None else stop, trace=trace)


X86_GPRS = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
            "r15"]  # in encoding order
X86_ENTRY = {name: 0x1000 * (k + 1) for k, name in enumerate(X86_GPRS)} | {"fs_base": 0}


def x86_rr(opcode: int, dst: int, src: int) -> bytes:
    """op r/m64, r64 (REX.W, ModRM mod=11)."""
    rex = 0x48 | (src >> 3) << 2 | dst >> 3
    return bytes([rex, opcode, 0xC0 | (src & 7) << 3 | dst & 7])


X86_OPS = {  # name -> (encoder(dst, src, imm), model(a, b, imm))
    "add": (lambda d, s, i: x86_rr(0x01, d, s), lambda a, b, i: a + b),
    "sub": (lambda d, s, i: x86_rr(0x29, d, s), lambda a, b, i: a - b),
    "xor": (lambda d, s, i: x86_rr(0x31, d, s), lambda a, b, i: a ^ b),
    "and": (lambda d, s, i: x86_rr(0x21, d, s), lambda a, b, i: a & b),
    "or": (lambda d, s, i: x86_rr(0x09, d, s), lambda a, b, i: a | b),
    "imul": (lambda d, s, i: bytes([0x48 | (d >> 3) << 2 | s >> 3, 0x0F, 0xAF, 0xC0 | (d & 7) << 3 | s & 7]),
             lambda a, b, i: a * b),
    "shl": (lambda d, s, i: bytes([0x48 | d >> 3, 0xC1, 0xE0 | d & 7, i & 63]), lambda a, b, i: a << (i & 63)),
    "mov": (lambda d, s, i: bytes([0x48 | d >> 3, 0xC7, 0xC0 | d & 7]) + (i & 0x7FFFFFFF).to_bytes(4, "little"),
            lambda a, b, i: i & 0x7FFFFFFF),
}
# registers that are neither the stack pointer (4) nor rbp/r13 quirks: any but rsp
X86_USABLE = [k for k in range(16) if k != 4]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(X86_OPS)), st.sampled_from(X86_USABLE),
                          st.sampled_from(X86_USABLE), st.integers(0, 1 << 31)), min_size=1, max_size=12),
       st.data())
def test_x86_straight_line_blocks_match_a_model_at_every_instruction(program, data):
    code, sizes = b"", []
    for op, d, s, imm in program:
        insn = X86_OPS[op][0](d, s, imm)
        code += insn
        sizes.append(len(insn))
    stop = data.draw(st.integers(0, len(program)))
    model = [X86_ENTRY[n] for n in X86_GPRS]
    models = [list(model)]
    for op, d, s, imm in program:
        model[d] = X86_OPS[op][1](model[d], model[s], imm) & MASK
        models.append(list(model))
    out = run_block("x86_64", code, sizes, X86_ENTRY, stop=stop)
    assert {n: out.registers[n] for n in X86_GPRS} == dict(zip(X86_GPRS, models[stop]))
    assert "eflags" not in out.registers  # not recorded here (entry without it): unknown, not zero
    # the watched run (replay, Tenet): the registers before every instruction
    states = run_block("x86_64", code, sizes, X86_ENTRY, trace=True).states
    assert [[regs[n] for n in X86_GPRS] for regs in states] == models[:-1]


def a64_rrr(base: int, rd: int, rn: int, rm: int, shift: int = 0) -> int:
    return base | rm << 16 | shift << 10 | rn << 5 | rd


A64_OPS = {
    "add": (lambda d, n, m, i: a64_rrr(0x8B000000, d, n, m, i % 64), lambda a, b, i: a + (b << (i % 64))),
    "sub": (lambda d, n, m, i: a64_rrr(0xCB000000, d, n, m, i % 64), lambda a, b, i: a - (b << (i % 64))),
    "eor": (lambda d, n, m, i: a64_rrr(0xCA000000, d, n, m, i % 64), lambda a, b, i: a ^ (b << (i % 64))),
    "orr": (lambda d, n, m, i: a64_rrr(0xAA000000, d, n, m, i % 64), lambda a, b, i: a | (b << (i % 64))),
    "and": (lambda d, n, m, i: a64_rrr(0x8A000000, d, n, m, i % 64), lambda a, b, i: a & (b << (i % 64))),
    "mul": (lambda d, n, m, i: a64_rrr(0x9B007C00, d, n, m), lambda a, b, i: a * b),
    "movz": (lambda d, n, m, i: 0xD2800000 | (i % 4) << 21 | (i & 0xFFFF) << 5 | d,
             lambda a, b, i: (i & 0xFFFF) << 16 * (i % 4)),
}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(A64_OPS)), st.integers(0, 28), st.integers(0, 28),
                          st.integers(0, 28), st.integers(0, 1 << 20)), min_size=1, max_size=12),
       st.data())
def test_aarch64_straight_line_blocks_match_a_model_at_every_instruction(program, data):
    words = [A64_OPS[op][0](d, n, m, imm) for op, d, n, m, imm in program]
    code = b"".join(w.to_bytes(4, "little") for w in words)
    stop = data.draw(st.integers(0, len(program)))
    entry = {f"x{k}": 0x77 * (k + 1) for k in range(31)} | {"sp": 0x7000, "cpsr": 0x60000000}
    model = [entry[f"x{k}"] for k in range(29)]
    models = [list(model)]
    for op, d, n, m, imm in program:
        # operands are read before the destination is written (model[m] is the old value even if d == m)
        model[d] = A64_OPS[op][1](model[n], model[m], imm) & MASK
        models.append(list(model))
    out = run_block("aarch64", code, [4] * len(words), entry, stop=stop)
    assert [out.registers[f"x{k}"] for k in range(29)] == models[stop]
    assert out.registers["cpsr"] == 0x60000000  # none of these set flags
    states = run_block("aarch64", code, [4] * len(words), entry, trace=True).states
    assert [[regs[f"x{k}"] for k in range(29)] for regs in states] == models[:-1]


def test_registers_computed_from_an_unrecorded_register_are_absent():
    # movq rax, xmm0 (xmm0 is not recorded); add rbx, rax; mov rcx, 5
    code = bytes.fromhex("66480f7ec0" "4801c3" "48c7c105000000")
    out = run_block("x86_64", code, [5, 3, 7], X86_ENTRY | {"eflags": 0x202})
    assert "rax" not in out.registers and "rbx" not in out.registers and "eflags" not in out.registers
    assert out.registers["rcx"] == 5 and out.registers["rdx"] == X86_ENTRY["rdx"]


def test_loads_take_the_recorded_values_and_only_them():
    # movdqu xmm0, [rdi]; movq rax, xmm0; mov rbx, [rsi]
    code = bytes.fromhex("f30f6f07" "66480f7ec0" "488b1e")
    sizes = [4, 5, 3]
    rdi, rsi = X86_ENTRY["rdi"], X86_ENTRY["rsi"]
    recorded = [Access(0, rdi, 8, False, 0x1122334455667788), Access(0, rdi + 8, 8, False, 0x99),
                Access(2, rsi, 8, False, 0xABCDEF)]
    out = run_block("x86_64", code, sizes, X86_ENTRY, recorded)
    assert out.registers["rax"] == 0x1122334455667788 and out.registers["rbx"] == 0xABCDEF
    # without the recorded value of the last load, rbx is unknown: never a guess
    out = run_block("x86_64", code, sizes, X86_ENTRY, recorded[:2])
    assert "rbx" not in out.registers and out.unrecorded_loads == [(2, rsi)]


@pytest.mark.parametrize("stored, mismatches", [(0x5000, []), (0x5001, [(0, 0x8000)])])
def test_stores_are_compared_with_the_recorded_values(stored, mismatches):
    code = bytes.fromhex("488907")  # mov [rdi], rax
    entry = X86_ENTRY | {"rax": 0x5000, "rdi": 0x8000}
    out = run_block("x86_64", code, [3], entry, [Access(0, 0x8000, 8, True, stored)])
    assert out.store_mismatches == mismatches


def _capstone_registers(cs_arch, cs_mode):
    cs = capstone.Cs(cs_arch, cs_mode)
    names = []
    for reg in range(1, 400):
        try:
            name = cs.reg_name(reg)
        except capstone.CsError:
            continue
        if name:
            names.append(name)
    return names


X86_NAMES = _capstone_registers(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
A64_NAMES = _capstone_registers(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)


@given(st.sampled_from(X86_NAMES))
def test_x86_register_names_map_to_the_register_they_are_part_of(name):
    canonical = ARCHES["x86_64"].canonical(name)
    full = {n: n for n in X86_GPRS}
    for k, n in enumerate(X86_GPRS):
        if k >= 8:
            full |= {n + "d": n, n + "w": n, n + "b": n}
    full |= {"eax": "rax", "ax": "rax", "al": "rax", "ah": "rax", "esp": "rsp", "sp": "rsp", "spl": "rsp",
             "esi": "rsi", "si": "rsi", "sil": "rsi", "edi": "rdi", "dil": "rdi", "ebp": "rbp", "bpl": "rbp",
             "ebx": "rbx", "bl": "rbx", "bh": "rbx", "ecx": "rcx", "cl": "rcx", "ch": "rcx", "cx": "rcx",
             "edx": "rdx", "dl": "rdx", "dh": "rdx", "dx": "rdx", "bx": "rbx", "bp": "rbp", "di": "rdi"}
    if name in full:
        assert canonical == full[name]
    elif name.startswith(("xmm", "ymm", "zmm")):
        assert canonical == "xmm" + name[3:]
    else:
        assert canonical not in X86_GPRS  # no other name may pass for a recorded register


@given(st.sampled_from(A64_NAMES))
def test_aarch64_register_names_map_to_the_register_they_are_part_of(name):
    canonical = ARCHES["aarch64"].canonical(name)
    if name[0] in "wx" and name[1:].isdigit():
        assert canonical == "x" + name[1:]
    elif name in ("sp", "wsp"):
        assert canonical == "sp"
    elif name in ("fp", "lr"):
        assert canonical == {"fp": "x29", "lr": "x30"}[name]
    else:
        assert canonical not in ARCHES["aarch64"].regs  # vector, system and zero registers stay apart


def test_two_traces_in_one_process_keep_their_own_blocks(recorded10):
    # block ids are per trace: re-executing one trace's blocks must not reuse
    # another's decoded code that has the same ids (the suite once ran the
    # `registers` trace first and this one then re-executed the wrong code)
    _, other, _ = recorded10("x86_64", "registers")
    program, trace, stdout = recorded10("x86_64", "reexec")
    seed, mid, _ = (int(word, 16) for word in stdout.split())
    with Trace.open(other) as o, Trace.open(trace) as t:
        for _ in o.replay(0, o.end):  # re-executes every block of the other trace
            pass
        pc, _ = symbol(program, "chain_mid")
        assert t.registers_at(position_of(t, pc))[RESULT_REG["x86_64"]] == mid
