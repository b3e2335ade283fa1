"""`cannoli replay` and Trace.replay: every position once, the instruction as the
recorded bytes say (checked against capstone on the ELF file, and against the
bytes a JIT guest wrote), memory accesses with values, syscalls with results."""

from __future__ import annotations

import csv
import io
import json
import re

import capstone
import pytest
from elftools.elf.elffile import ELFFile

from cannoli_db import Trace

from .conftest import function_containing, run_cannoli, symbol


def elf_instruction(program, pc: int) -> str:
    """The instruction at pc as capstone reads it from the ELF file on disk."""
    with open(program, "rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        data, base = text.data(), text["sh_addr"]
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    insn = next(md.disasm(data[pc - base: pc - base + 16], pc, 1))
    return f"{insn.mnemonic} {insn.op_str}".strip()


@pytest.fixture(scope="module")
def history(guest, recorded):
    trace, _, counted = recorded("history", "3")
    return guest("history"), trace, counted


def replay_json(trace, span, *extra):
    proc = run_cannoli("replay", trace, "--range", span, "--format", "json", *extra)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_steps_of_a_function_match_the_elf_and_the_source(history):
    program, trace, _ = history
    cell, _ = symbol(program, "cell")
    low, size = symbol(program, "write_low")
    steps = replay_json(trace, "write_low:+8")
    assert steps[0]["pc"] == low and steps[0]["symbol"] == "write_low"
    inside = [s for s in steps if function_containing(program, s["pc"]) == "write_low"]
    assert inside and all(s["insn"] == elf_instruction(program, s["pc"]) for s in inside)
    writes = [(m["addr"], m["size"], m["value"]) for s in inside for m in s["mem"] if m["write"]]
    assert writes == [(cell, 1, 0xAA)]
    assert [s["idx"] for s in steps] == list(range(steps[0]["idx"], steps[0]["idx"] + 8))


def test_whole_trace_replays_every_position_once(history):
    _, trace, counted = history
    with Trace.open(trace) as t:
        idx = [s.idx for s in t.replay()]
    assert idx == list(range(counted))


def test_syscall_step_has_arguments_and_result(history, qemu_strace):
    program, trace, _ = history
    with Trace.open(trace) as t:
        calls = [s for s in t.replay() if s.syscall is not None]
    assert len(calls) == len(qemu_strace(program, "3"))
    assert all(s.insn == "syscall" for s in calls)
    (opened,) = [s.syscall for s in calls if s.syscall.name == "openat"]
    assert opened.ret == -2  # ENOENT: the guest opens a path that does not exist


def test_self_modifying_code_replays_the_bytes_that_ran(recorded):
    trace, stdout, _ = recorded("jit")
    code = int(re.search(r"code=(\w+)", stdout)[1], 16)
    with Trace.open(trace) as t:
        (first,) = t.sql("SELECT min(idx) FROM insns WHERE pc = $pc", {"pc": code}).rows[0]
        (last,) = t.sql("SELECT max(idx) FROM insns WHERE pc = $pc", {"pc": code}).rows[0]
        runs = [next(iter(t.replay(i, i + 1))) for i in (first, last)]
    assert [(s.insn, s.bytes) for s in runs] == [("mov eax, 1", bytes.fromhex("b801000000")),
                                                ("mov eax, 2", bytes.fromhex("b802000000"))]


def test_tid_filter_follows_one_thread(recorded):
    trace, stdout, counted = recorded("threads", "3", "2000")
    tids = [int(t) for t in re.findall(r"worker_tid=(\d+)", stdout)]
    with Trace.open(trace) as t:
        per_thread = {tid: [s.idx for s in t.replay(tid=tid)] for tid in tids}
        main_tid = int(re.search(r"main_tid=(\d+)", stdout)[1])
        per_thread[main_tid] = [s.idx for s in t.replay(tid=main_tid)]
    assert sum(len(v) for v in per_thread.values()) == counted
    assert all(v == sorted(v) for v in per_thread.values())
    text = run_cannoli("replay", trace, "--range", ":2000", "--tid", str(tids[0]))
    assert text.returncode == 0 and all(line.split()[1] == str(tids[0]) for line in text.stdout.splitlines()
                                        if not line.startswith(" " * 19 + "syscall"))


@pytest.mark.parametrize("args, message", [
    (["--range", "10:5"], "inverted"),
    (["--range", "999999999:"], "outside the trace"),
    (["--range", "0:999999999"], "outside the trace"),
    (["--range", "10"], "START:END"),
    (["--range", ":10", "--tid", "1"], "no thread 1"),
    (["--range", "no_such_function:"], "unknown symbol"),
])
def test_bad_ranges_are_one_line(history, args, message):
    _, trace, _ = history
    proc = run_cannoli("replay", trace, *args)
    assert proc.returncode != 0 and message in proc.stderr and proc.stderr.count("\n") == 1


def test_memory_command_hexdump_with_unknown_bytes(history):
    program, trace, _ = history
    cell, _ = symbol(program, "cell")
    end = run_cannoli("memory", trace, "cell", "8")
    assert end.returncode == 0 and "aa 11 cc bb 11 11 11 11" in end.stdout
    first = replay_json(trace, "write_all:+1")[0]["idx"]
    before = run_cannoli("memory", trace, hex(cell), "8", "--at", str(first), "--format", "json")
    assert json.loads(before.stdout) == {"addr": cell, "at": first, "bytes": [None] * 8}
    assert "?? ?? ?? ??" in run_cannoli("memory", trace, "cell", "8", "--at", str(first)).stdout


def table_rows(text: str) -> list[list[str]]:
    """The cells of a rich table's data rows (the lines between │ bars)."""
    return [[cell.strip() for cell in line.strip().strip("│").split("│")] for line in text.splitlines()
            if line.startswith("│")]


def test_replay_jsonl_is_the_old_json_and_json_says_so(history):
    _, trace, _ = history
    old = run_cannoli("replay", trace, "--range", "write_low:+8", "--format", "json")
    new = run_cannoli("replay", trace, "--range", "write_low:+8", "--format", "jsonl")
    assert old.returncode == 0 and new.returncode == 0
    assert new.stdout == old.stdout and len(new.stdout.splitlines()) == 8
    assert "say jsonl" in old.stderr and old.stderr.count("\n") == 1 and new.stderr == ""


def test_replay_rows_in_every_shared_format_match_the_elf(history):
    program, trace, _ = history
    low, _ = symbol(program, "write_low")
    steps = replay_json(trace, "write_low:+4")
    rows = list(csv.DictReader(io.StringIO(
        run_cannoli("replay", trace, "--range", "write_low:+4", "--format", "csv").stdout)))
    assert [int(r["idx"]) for r in rows] == [s["idx"] for s in steps]
    assert int(rows[0]["pc"]) == low and rows[0]["insn"] == elf_instruction(program, low)
    table = table_rows(run_cannoli("replay", trace, "--range", "write_low:+4", "--format", "table").stdout)
    assert [r[2] for r in table] == [hex(s["pc"]) for s in steps]  # pc in hex, by its column's kind
    assert [r[0] for r in table] == [str(s["idx"]) for s in steps]  # positions in decimal
    jsonl = run_cannoli("replay", trace, "--range", "write_low:+4", "--format", "jsonl").stdout
    assert [json.loads(line) for line in jsonl.splitlines()] == steps


def test_memory_in_every_format_shows_the_bytes_the_guest_printed(history, recorded):
    program, trace, _ = history
    cell, _ = symbol(program, "cell")
    _, printed, _ = recorded("history", "3")  # the guest's stdout: cell=<its final value>
    final = int(re.search(r"cell=([0-9a-f]+)", printed)[1], 16).to_bytes(8, "little")
    run = lambda fmt: run_cannoli("memory", trace, "cell", "8", "--format", fmt)  # noqa: E731
    assert json.loads(run("json").stdout)["bytes"] == list(final)
    assert [json.loads(line) for line in run("jsonl").stdout.splitlines()] == [
        {"addr": cell + k, "value": b} for k, b in enumerate(final)]
    assert list(csv.reader(io.StringIO(run("csv").stdout))) == [
        ["addr", "value"], *[[str(cell + k), str(b)] for k, b in enumerate(final)]]
    assert table_rows(run("table").stdout) == [[hex(cell + k), hex(b)] for k, b in enumerate(final)]
    assert final.hex(" ") in run("hexdump").stdout
    assert all(run(fmt).stderr == "" for fmt in ("hexdump", "json"))  # every byte known: no note


def test_memory_says_how_many_bytes_are_unknown(history):
    program, trace, _ = history
    cell, _ = symbol(program, "cell")
    first = replay_json(trace, "write_all:+1")[0]["idx"]
    proc = run_cannoli("memory", trace, "cell", "8", "--at", first, "--format", "csv")
    assert proc.returncode == 0 and f"8 of 8 bytes at {cell:#x} are unknown at position {first}" in proc.stderr
    assert [r["value"] for r in csv.DictReader(io.StringIO(proc.stdout))] == [""] * 8
    with Trace.open(trace) as t:  # the API's default position is the end, as the command's
        assert t.memory_at(None, "cell", 8) == t.memory_at(t.end, "cell", 8)
        steps = replay_json(trace, "write_low:+8")
        assert t.positions("write_low:+8") == (steps[0]["idx"], steps[0]["idx"] + 8)
        assert [s.idx for s in t.replay(span="write_low:+8")] == [s["idx"] for s in steps]
