"""Symbols and source lines as gdb finds them (cannoli_db.symbols, Symbolizer):
checked against real gdb (`info line`, its debug-file search and CRC check),
nm on the debug files, the guest's source, and the bytes xz printed.  Debug
files are made with binutils (objcopy --only-keep-debug / --add-gnu-debuglink)
and laid where gdb looks; Debian's libc6-dbg provides libc's."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cannoli_db import Trace
from cannoli_db.symbols import SourceLines, elf_symbols, find_debug_file, module_symbols
from cannoli_db.symbols.debug_files import build_id

from .conftest import GUEST_ENV, GUESTS, run_cannoli

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


def gdb_lines(program, addrs, *settings: str) -> list[tuple[str, int] | None]:
    """gdb's `info line *ADDR` for each address of a file (unrelocated), one gdb run."""
    args = [a for s in settings for a in ("-iex", s)]  # before gdb loads the file
    for addr in addrs:
        args += ["-ex", f"info line *{addr:#x}"]
    proc = subprocess.run(["gdb", "-batch", "-nx", *args, str(program)], capture_output=True, text=True, timeout=300)
    answers = [ln for ln in proc.stdout.splitlines() if ln.startswith(("Line ", "No line number"))]
    assert len(answers) == len(addrs), proc.stdout + proc.stderr
    return [(m[2], int(m[1])) if (m := re.match(r'Line (\d+) of "([^"]+)"', ln)) else None for ln in answers]


def function_pcs(program, *names: str) -> list[int]:
    """Every instruction address of the named functions, by capstone over the ELF file."""
    import capstone

    with open(program, "rb") as f:
        elf = ELFFile(f)
        text = elf.get_section_by_name(".text")
        data, base = text.data(), text["sh_addr"]
        symtab = elf.get_section_by_name(".symtab")
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        pcs = []
        for name in names:
            sym = symtab.get_symbol_by_name(name)[0]
            start = sym["st_value"]
            pcs += [i.address for i in md.disasm(data[start - base: start - base + sym["st_size"]], start)]
    return pcs


def function(symbol: str) -> str:
    return symbol.split("+")[0]


def source_line_of(path: Path, marker: str) -> int:
    lines = path.read_text().splitlines()
    (number,) = [i + 1 for i, text in enumerate(lines) if marker in text]
    return number


def build(tmp_path: Path, name: str, out: str, *flags: str) -> Path:
    target = tmp_path / out
    subprocess.run(["cc", "-O1", "-g", *flags, "-o", str(target), str(GUESTS / f"{name}.c")], check=True)
    return target


def split_debug(program: Path, stripped: Path, link: bool) -> Path:
    """program -> stripped (no symbols, no DWARF) + program.debug, as distributions split them."""
    debug = program.with_name(program.name + ".debug")
    subprocess.run(["objcopy", "--only-keep-debug", str(program), str(debug)], check=True)
    subprocess.run(["objcopy", "--strip-all", str(program), str(stripped)], check=True)
    if link:
        subprocess.run(["objcopy", f"--add-gnu-debuglink={debug}", str(stripped)], check=True, cwd=debug.parent)
    return debug


# -- lines of a static guest built with -g ------------------------------------------------------


def test_line_of_a_known_store_is_the_line_of_that_store_in_the_source(guest, recorded):
    program = guest("known_stores")
    trace, _, _ = recorded("known_stores")
    with Trace.open(trace) as t:
        (w,) = t.who_wrote("known_u32", size=4)
        assert t.line(w.pc) == (str(GUESTS / "known_stores.c"),
                                source_line_of(GUESTS / "known_stores.c", "known_u32 = 0xCAFEF00Du;"))
        assert w.line == f"{GUESTS / 'known_stores.c'}:{t.line(w.pc)[1]}"
    addr2line = subprocess.run(["addr2line", "-e", str(program), hex(w.pc)], capture_output=True, text=True).stdout
    assert addr2line.strip() == w.line


def test_every_pc_of_the_guests_functions_has_gdbs_line(guest, recorded):
    program = guest("known_stores")
    trace, _, _ = recorded("known_stores")
    pcs = function_pcs(program, "main", "store_known_values")
    with Trace.open(trace) as t:
        assert t.symbolizer.lines(pcs) == gdb_lines(program, pcs)


@pytest.mark.parametrize("dwarf", ["-gdwarf-5", "-gdwarf-4"])
@pytest.mark.parametrize("aranges", [True, False], ids=["aranges", "no-aranges"])
def test_lines_match_gdb_for_each_dwarf_version_with_and_without_aranges(tmp_path, dwarf, aranges):
    # -O2 puts main in .text.startup: the unit has two ranges (DW_AT_ranges) when .debug_aranges is gone
    program = build(tmp_path, "history", "history", "-O2", dwarf)
    if not aranges:
        subprocess.run(["objcopy", "--remove-section=.debug_aranges", str(program)], check=True)
    with open(program, "rb") as f:
        elf = ELFFile(f)
        assert (elf.get_section_by_name(".debug_aranges") is not None) == aranges
        cu = next(elf.get_dwarf_info().iter_CUs())
        assert cu["version"] == int(dwarf[-1])
    pcs = function_pcs(program, "main", "write_all", "write_mid", "read_cell")
    lines = SourceLines()
    assert [lines.line(str(program), pc) for pc in pcs] == gdb_lines(program, pcs)


# -- separate debug files: build ID and .gnu_debuglink --------------------------------------------


def test_debug_file_by_build_id_in_the_debug_directory_and_under_the_sysroot(tmp_path):
    program = build(tmp_path, "known_stores", "prog", "-Wl,--build-id=sha1")
    stripped = tmp_path / "stripped"
    debug = split_debug(program, stripped, link=False)
    with open(stripped, "rb") as f:
        ident = build_id(ELFFile(f))
    readelf = subprocess.run(["readelf", "-n", str(stripped)], capture_output=True, text=True).stdout
    assert ident is not None and f"Build ID: {ident.hex()}" in readelf
    assert find_debug_file(str(stripped), debug_dirs=[str(tmp_path / "debug")]) is None

    placed = tmp_path / "debug" / ".build-id" / ident[:1].hex() / (ident[1:].hex() + ".debug")
    placed.parent.mkdir(parents=True)
    shutil.copy(debug, placed)
    assert find_debug_file(str(stripped), debug_dirs=[str(tmp_path / "debug")]) == str(placed)
    # gdb finds the same file: its lines are the ones gdb prints
    pcs = function_pcs(debug, "store_known_values")
    found = SourceLines()
    assert [found.line(str(placed), pc) for pc in pcs] == gdb_lines(
        stripped, pcs, f"set debug-file-directory {tmp_path / 'debug'}") != [None] * len(pcs)

    # under a sysroot: SYSROOT/usr/lib/debug/.build-id/...
    sysroot = tmp_path / "sysroot"
    in_sysroot = sysroot / "usr/lib/debug" / placed.relative_to(tmp_path / "debug")
    in_sysroot.parent.mkdir(parents=True)
    shutil.move(placed, in_sysroot)
    assert find_debug_file(str(stripped), str(sysroot), debug_dirs=["/usr/lib/debug"]) == str(in_sysroot)

    # a file at the build-id path that carries another build ID is not the debug file
    other = build(tmp_path, "history", "other", "-Wl,--build-id=sha1")
    subprocess.run(["objcopy", "--only-keep-debug", str(other), str(in_sysroot)], check=True)
    assert find_debug_file(str(stripped), str(sysroot), debug_dirs=["/usr/lib/debug"]) is None


@pytest.mark.parametrize("where", ["beside", ".debug", "global"])
def test_debug_file_by_debuglink_where_gdb_looks(tmp_path, where):
    program = build(tmp_path, "known_stores", "prog", "-Wl,--build-id=none")
    module_dir = tmp_path / "bin"
    module_dir.mkdir()
    stripped = module_dir / "prog"
    debug = split_debug(program, stripped, link=True)
    global_dir = tmp_path / "global"
    target = {"beside": module_dir / debug.name, ".debug": module_dir / ".debug" / debug.name,
              "global": global_dir / str(module_dir).lstrip("/") / debug.name}[where]
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(debug, target)
    assert find_debug_file(str(stripped), debug_dirs=[str(global_dir)]) == str(target)
    pcs = function_pcs(target, "store_known_values")
    found = SourceLines()
    assert [found.line(str(target), pc) for pc in pcs] == gdb_lines(
        stripped, pcs, f"set debug-file-directory {global_dir}") != [None] * len(pcs)


def test_debuglink_whose_crc_does_not_match_is_ignored_as_gdb_ignores_it(tmp_path):
    program = build(tmp_path, "known_stores", "prog", "-Wl,--build-id=none")
    stripped = tmp_path / "stripped"
    debug = split_debug(program, stripped, link=True)
    assert find_debug_file(str(stripped), debug_dirs=[]) == str(debug)
    # another build's debug information under the linked name: same name, other CRC
    subprocess.run(["cc", "-O2", "-g", "-Wl,--build-id=none", "-o", str(tmp_path / "o2"),
                    str(GUESTS / "known_stores.c")], check=True)
    subprocess.run(["objcopy", "--only-keep-debug", str(tmp_path / "o2"), str(debug)], check=True)
    assert find_debug_file(str(stripped), debug_dirs=[]) is None
    gdb = subprocess.run(["gdb", "-batch", "-nx", "-iex", "set debug-file-directory /nonexistent",
                          "-ex", "info functions store_known", str(stripped)], capture_output=True, text=True)
    assert "CRC mismatch" in gdb.stdout + gdb.stderr


def test_symbols_of_a_stripped_module_come_from_its_debug_file(tmp_path):
    program = build(tmp_path, "known_stores", "prog", "-Wl,--build-id=sha1")
    stripped = tmp_path / "stripped"
    debug = split_debug(program, stripped, link=True)
    nm = subprocess.run(["nm", str(debug)], capture_output=True, text=True).stdout
    value = int(re.search(r"^([0-9a-f]+) T store_known_values$", nm, re.M)[1], 16)
    assert "store_known_values" not in {s[0] for s in elf_symbols(str(stripped))}
    assert ("store_known_values", value) in {(s[0], s[1]) for s in module_symbols(str(stripped))}
    assert find_debug_file(str(stripped)) == str(debug)  # by debuglink, beside the module


# -- damaged files ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compressed_dwarf(tmp_path_factory):
    """A guest whose DWARF 5 sections are zlib-compressed (gcc -gz), its bytes and some pcs."""
    work = tmp_path_factory.mktemp("damaged")
    program = build(work, "history", "history", "-O2", "-gz")
    assert "C" in subprocess.run(["readelf", "-SW", str(program)], capture_output=True, text=True).stdout.split(
        ".debug_info")[1].splitlines()[0]  # the section's flags: compressed
    return work, program.read_bytes(), function_pcs(program, "main", "write_all")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.one_of(st.none(), st.integers(0, 1 << 16)),
       flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=40))
def test_damaged_elf_or_dwarf_gives_no_name_or_line_never_an_error(compressed_dwarf, cut, flips):
    work, data, pcs = compressed_dwarf
    damaged = bytearray(data)
    for at, value in flips:
        damaged[at % len(damaged)] = value
    if cut is not None:
        damaged = damaged[: cut * len(damaged) >> 16]
    path = work / "damaged"
    path.write_bytes(bytes(damaged))
    assert all(isinstance(s[0], str) and isinstance(s[1], int) for s in elf_symbols(str(path)))
    assert find_debug_file(str(path), debug_dirs=[str(work / "none")]) in (None, str(work / "history.debug"))
    lines = SourceLines()
    for pc in pcs:
        found = lines.line(str(path), pc)
        assert found is None or (isinstance(found[0], str) and isinstance(found[1], int))
    if not flips and cut is None:  # the undamaged file still answers as gdb does
        assert [lines.line(str(path), pc) for pc in pcs] == gdb_lines(work / "history", pcs)


# -- a distribution binary through libc6-dbg -------------------------------------------------------


@pytest.fixture(scope="module")
def xz_trace(tmp_path_factory):
    """Debian's /usr/bin/xz (dynamic) compressing ~32 KB to stdout, recorded on QEMU 7.2."""
    if not os.path.exists("/usr/bin/xz"):
        pytest.fail("/usr/bin/xz is missing: apt-get install xz-utils")
    if find_debug_file(LIBC) is None:
        pytest.fail("libc's debug file is missing: run the README's setup command (apt-get install libc6-dbg)")
    work = tmp_path_factory.mktemp("xz")
    words = [f"{w}{i % 97}" for i, w in enumerate("cannoli trace symbol debug line memcpy write".split() * 600)]
    (work / "input.txt").write_text(" ".join(words))
    # -0: a small dictionary keeps the recording short (xz's default preset spends
    # tens of millions of instructions preparing its 8 MiB match finder)
    command = ["/usr/bin/xz", "-0", "-k", "-c", str(work / "input.txt")]
    trace = work / "xz.cannoli"
    # the index is built apart: its stdout is not the program's
    proc = subprocess.run([sys.executable, "-m", "cannoli_db.cli", "record", "--no-index", "-o", str(trace), *command],
                          env=GUEST_ENV, capture_output=True, timeout=900, cwd=work)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == subprocess.run(command, capture_output=True, check=True).stdout
    indexed = run_cannoli("index", trace)
    assert indexed.returncode == 0, indexed.stderr
    return trace, proc.stdout


def test_writer_of_xz_output_is_named_from_libc6_dbg(xz_trace):
    trace, printed = xz_trace
    with Trace.open(trace) as t:
        idx, buf, n = t.sql("SELECT idx, arg1, ret FROM syscalls WHERE name = 'write' AND arg0 = 1 "
                            "ORDER BY idx LIMIT 1").rows[0]
        assert bytes(t.memory_at(idx, buf, n)) == printed[:n]
        writes = t.who_wrote(buf, size=n, before=idx)
        (bias,) = t.sql("SELECT load_bias FROM modules WHERE path LIKE '%/libc.so.6'").rows[0]
        lines = {w.pc: t.line(w.pc) for w in writes}
    by_bytes: dict[str, int] = {}
    for w in writes:
        by_bytes[function(w.symbol)] = by_bytes.get(function(w.symbol), 0) + w.bytes
    writer = max(by_bytes, key=by_bytes.get)
    assert writer.startswith(("__memmove", "__memcpy")), by_bytes
    debug_names = set(subprocess.run(["nm", find_debug_file(LIBC)], capture_output=True, text=True)
                      .stdout.split())
    dynamic_names = set(subprocess.run(["nm", "-D", LIBC], capture_output=True, text=True).stdout.split())
    assert writer in debug_names and writer not in dynamic_names
    # each writing pc's source line is the one gdb gives for libc (gdb finds libc6-dbg's file itself)
    in_libc = sorted({w.pc for w in writes if function(w.symbol) == writer})
    assert [lines[pc] for pc in in_libc] == gdb_lines(LIBC, [pc - bias for pc in in_libc])
    assert all(lines[pc][0].endswith(".S") for pc in in_libc)


def test_who_wrote_and_replay_print_the_source_line(xz_trace):
    trace, _ = xz_trace
    with Trace.open(trace) as t:
        idx, buf, n = t.sql("SELECT idx, arg1, ret FROM syscalls WHERE name = 'write' AND arg0 = 1 "
                            "ORDER BY idx LIMIT 1").rows[0]
        w = t.who_wrote(buf + n - 1, before=idx)[0]
        step = next(t.replay(w.idx, w.idx + 1))
    assert step.pc == w.pc and step.line == w.line and w.line is not None
    assert step.as_dict()["line"] == w.line and step.text().endswith(f"; {os.path.basename(w.line)}")
    proc = subprocess.run([sys.executable, "-m", "cannoli_db.cli", "who-wrote", str(trace), hex(buf + n - 1),
                           "--before", str(idx), "--format", "json"], env=GUEST_ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert (row["pc"], row["symbol"], row["line"]) == (w.pc, w.symbol, w.line)
