"""`cannoli export`: Parquet (queried back by DuckDB through `cannoli sql
--parquet`, and by Apache Spark), drcov (parsed back and checked against the
exec table), Tenet (checked against a known store and the instruction count)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import struct

import pytest
from elftools.elf.elffile import ELFFile

from cannoli_db import Trace

from .conftest import qemu_under_test, run_cannoli, symbol

CHECKS = [
    "SELECT tid, count(*) AS n, sum(icount) AS insns, max(idx) AS last FROM exec GROUP BY tid ORDER BY tid",
    "SELECT count(*) AS n, sum(value % 1000003) AS v, sum(addr % 1000003) AS a FROM mem WHERE is_write",
    "SELECT name, count(*) AS n FROM syscalls GROUP BY name ORDER BY name",
    "SELECT count(*) AS n, max(idx) AS last FROM insns",
]


@pytest.fixture(scope="module")
def exported(recorded, tmp_path_factory):
    trace, _, counted = recorded("threads", "3", "3000")
    out = tmp_path_factory.mktemp("export") / "parquet"
    proc = run_cannoli("export", trace, "--format", "parquet", "-o", out)
    assert proc.returncode == 0, proc.stderr
    return trace, out, counted


def as_json(*args):
    proc = run_cannoli(*args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("query", CHECKS)
def test_parquet_export_answers_like_the_trace(exported, query):
    trace, out, _ = exported
    assert as_json("sql", "--parquet", out, query) == as_json("sql", trace, query)


def test_parquet_is_partitioned_by_thread(exported):
    trace, out, _ = exported
    with Trace.open(trace) as t:
        tids = {r[0] for r in t.sql("SELECT tid FROM threads").rows}
    assert {p.name for p in (out / "mem").iterdir()} == {f"tid={tid}" for tid in tids}
    assert all(p.name.startswith("span=") for p in (out / "exec").glob("tid=*/*"))


def test_spark_reads_the_trace_directory(exported):
    """The store's parts are the queryable form: Spark reads TRACE/chunks/exec and
    TRACE/chunks/mem as they are, with no export step."""
    trace, out, counted = exported
    if not shutil.which("java"):
        pytest.skip("Spark needs Java (apt-get install openjdk-17-jre-headless: the README's setup does it)")
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as fn

    spark = (SparkSession.builder.master("local[2]").appName("cannoli-export-test")
             .config("spark.ui.enabled", "false").getOrCreate())
    try:
        rows = (spark.read.parquet(str(trace / "chunks" / "exec")).groupBy("tid")
                .agg(fn.count("*").alias("n"), fn.sum("icount").alias("insns")).collect())
        spark_exec = sorted((int(r["tid"]), r["n"], r["insns"]) for r in rows)
        writes = (spark.read.parquet(str(trace / "chunks" / "mem")).where("is_write")
                  .agg(fn.count("*").alias("n"), fn.sum("size").alias("bytes")).collect()[0])
        spark_export = (spark.read.parquet(str(out / "exec")).agg(fn.sum("icount").alias("insns")).collect()[0])
    finally:
        spark.stop()
    with Trace.open(trace) as t:
        duck_exec = sorted(t.sql("SELECT tid, count(*), sum(icount) FROM exec GROUP BY tid").rows)
        duck_writes = t.sql("SELECT count(*), sum(size) FROM mem WHERE is_write").rows[0]
    # the instruction total is the independent counter's, from the same QEMU run
    assert spark_exec == duck_exec and sum(r[2] for r in spark_exec) == counted
    assert (writes["n"], writes["bytes"]) == tuple(duck_writes) and writes["n"] > 0
    assert spark_export["insns"] == counted  # and the export, a copy, says the same


def parse_drcov(path):
    data = path.read_bytes()
    head, _, rest = data.partition(b"BB Table: ")
    count_line, _, table = rest.partition(b"\n")
    n = int(count_line.split()[0])
    lines = head.decode().splitlines()
    assert lines[0] == "DRCOV VERSION: 2" and lines[2].startswith("Module Table: version 2")
    modules = {}
    for line in lines[4:]:
        fields = [f.strip() for f in line.split(",")]
        modules[int(fields[0])] = (int(fields[1], 16), int(fields[2], 16), fields[6])
    assert len(table) == 8 * n
    return modules, [struct.unpack_from("<IHH", table, 8 * i) for i in range(n)]


def test_drcov_has_every_executed_block(recorded, tmp_path):
    trace, _, _ = recorded("history", "3")
    out = tmp_path / "cov.drcov"
    assert run_cannoli("export", trace, "--format", "drcov", "-o", out).returncode == 0
    modules, blocks = parse_drcov(out)
    covered = {(modules[m][0] + offset, size) for offset, size, m in blocks}
    with Trace.open(trace) as t:
        executed = set(t.sql("""SELECT DISTINCT b.pc, b.size FROM exec e JOIN blocks b USING (block_id)
                                JOIN modules m ON b.pc >= m.start AND b.pc < m."end\"""").rows)
        exe = t.sql("SELECT path FROM modules WHERE kind = 'executable'").rows[0][0]
    assert covered == executed
    assert exe in {path for _, _, path in modules.values()}


def test_tenet_trace_has_each_instruction_and_the_known_store(guest, recorded, tmp_path):
    trace, _, counted = recorded("known_stores")
    out = tmp_path / "trace.tenet"
    assert run_cannoli("export", trace, "--format", "tenet", "-o", out).returncode == 0
    lines = out.read_text().splitlines()
    assert len(lines) == counted and all(line.startswith("rip=0x") for line in lines)
    addr, _ = symbol(guest("known_stores"), "known_u32")
    assert sum(f"mw={addr:#x}:0df0feca" in line for line in lines) == 1  # 0xCAFEF00D, little-endian


def test_tenet_trace_carries_register_changes_at_every_instruction_from_qemu_10(guest, tmp_path):
    program = guest("registers")
    trace = tmp_path / "regs.cannoli"
    assert run_cannoli("record", "-o", trace, "--qemu", qemu_under_test("10").bin_dir, program).returncode == 0
    out = tmp_path / "regs.tenet"
    assert run_cannoli("export", trace, "--format", "tenet", "-o", out).returncode == 0
    lines = out.read_text().splitlines()
    after_syscall, _ = symbol(program, "after_syscall")
    (line,) = [line for line in lines if f"rip={after_syscall:#x}" in line]
    assert "rax=0x11," in line  # write's return value: the 17 bytes the guest printed
    # rbx changes in the middle of a block: on the line after the instruction that loaded it,
    # which the ELF file shows is `movabs rbx, 0x1111111111111101` (48 bb + the constant)
    (j,) = [j for j, line in enumerate(lines) if "rbx=0x1111111111111101," in line]
    loader = int(lines[j - 1].split("rip=")[1].split(",")[0], 16)
    with open(program, "rb") as f:
        elf = ELFFile(f)
        text = elf.get_section_by_name(".text")
        code = text.data()[loader - text["sh_addr"]: loader - text["sh_addr"] + 10]
    assert code == bytes.fromhex("48bb") + (0x1111111111111101).to_bytes(8, "little")
    assert all(name in lines[0] for name in ("rax=", "rsp=", "r15="))  # the first line: the whole state
    assert sum("rbx=" in line for line in lines) < len(lines) / 10  # changes, not a dump per line


def test_export_refuses_to_overwrite_and_bad_parquet_dir(exported, tmp_path):
    trace, out, _ = exported
    proc = run_cannoli("export", trace, "--format", "parquet", "-o", out)
    assert proc.returncode == 1 and "already exists" in proc.stderr and proc.stderr.count("\n") == 1
    proc = run_cannoli("sql", "--parquet", tmp_path, "SELECT 1")
    assert proc.returncode == 1 and "not a Parquet export" in proc.stderr


# -- the spelling `cannoli export KIND TRACE -o OUT`, and the old one for this release ----------------

@pytest.fixture(scope="module")
def exported_new_spelling(exported, tmp_path_factory):
    trace, _, counted = exported
    out = tmp_path_factory.mktemp("export-new") / "parquet"
    proc = run_cannoli("export", "parquet", trace, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("\n") == 1 and "exported" in proc.stderr and "now spelled" not in proc.stderr
    return trace, out, counted


@pytest.mark.parametrize("query", CHECKS)
def test_parquet_export_by_its_subcommand_answers_like_the_trace(exported_new_spelling, query):
    trace, out, _ = exported_new_spelling
    assert as_json("sql", "--parquet", out, query) == as_json("sql", trace, query)


def test_open_parquet_gives_a_trace_over_the_export(exported_new_spelling):
    trace, out, counted = exported_new_spelling
    with Trace.open_parquet(out) as t:
        assert t.sql("SELECT count(*) FROM insns").rows == [(counted,)]  # the independent instruction count
        thread_summary = t.query("thread_summary").rows
    with Trace.open(trace) as t:
        assert thread_summary == t.query("thread_summary").rows


def suggested_command(stderr: str) -> list[str]:
    """The new spelling the old one's note names: the argv between backticks after `now spelled`."""
    (note,) = [line for line in stderr.splitlines() if "now spelled" in line]
    return shlex.split(note.split("now spelled `", 1)[1].split("`", 1)[0])


def test_old_spelling_works_and_says_the_new_one_which_writes_the_same_file(recorded, tmp_path):
    trace, _, _ = recorded("history", "3")
    out = tmp_path / "cov.drcov"
    old = run_cannoli("export", trace, "--format", "drcov", "-o", out)
    assert old.returncode == 0, old.stderr
    lines = old.stderr.splitlines()
    assert len(lines) == 2 and "exported" in lines[0] and "now spelled" in lines[1]  # the note comes last
    argv = suggested_command(old.stderr)
    assert argv == ["cannoli", "export", "drcov", str(trace), "-o", str(out)]
    written = out.read_bytes()
    out.unlink()
    new = run_cannoli(*argv[1:])
    assert new.returncode == 0 and "now spelled" not in new.stderr, new.stderr
    assert out.read_bytes() == written
    modules, blocks = parse_drcov(out)
    assert modules and blocks


def test_old_spelling_with_the_option_first_and_an_equals_sign(recorded, tmp_path):
    trace, _, counted = recorded("known_stores")
    out = tmp_path / "t.tenet"
    proc = run_cannoli("export", "--format=tenet", trace, "-o", out)
    assert proc.returncode == 0 and "now spelled `cannoli export tenet" in proc.stderr, proc.stderr
    assert len(out.read_text().splitlines()) == counted


def test_tenet_by_its_subcommand_for_one_thread(recorded, tmp_path):
    trace, stdout, _ = recorded("threads", "3", "2000")
    worker = int(re.findall(r"worker_tid=(\d+)", stdout)[0])  # the tid the guest printed for itself
    out = tmp_path / "worker.tenet"
    proc = run_cannoli("export", "tenet", trace, "-o", out, "--tid", worker)
    assert proc.returncode == 0 and "now spelled" not in proc.stderr, proc.stderr
    with Trace.open(trace) as t:
        (insns,) = t.sql("SELECT insns FROM threads WHERE tid = $t", {"t": worker}).rows[0]
        pcs = [pc for (pc,) in t.sql("SELECT pc FROM insns WHERE tid = $t ORDER BY idx", {"t": worker}).rows]
    lines = out.read_text().splitlines()
    assert len(lines) == insns and [int(line.split("rip=")[1].split(",")[0], 16) for line in lines] == pcs


@pytest.mark.parametrize("args, message", [
    (["export", "{trace}", "--format", "csv", "-o", "{out}"], "'csv' is not one of parquet, drcov, tenet"),
    (["export", "{trace}", "-o", "{out}"], "say what to export first: cannoli export {parquet,drcov,tenet}"),
    (["export", "tenet", "{trace}"], "Missing option '-o'"),
])
def test_export_usage_errors_are_one_line(recorded, tmp_path, args, message):
    trace, _, _ = recorded("known_stores")
    proc = run_cannoli(*[a.format(trace=trace, out=tmp_path / "x") for a in args])
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", [["query", "{t}", "thread_summary"], ["export", "parquet", "{t}", "-o", "{o}"],
                                     ["export", "drcov", "{t}", "-o", "{o}.drcov"]])
def test_an_index_of_another_version_is_refused_by_every_reader(recorded, tmp_path, command):
    import duckdb

    trace, _, _ = recorded("known_stores")
    old = tmp_path / "old.cannoli"
    shutil.copytree(trace, old)
    with duckdb.connect(str(old / "trace.duckdb")) as con:  # as an index of schema 3 says
        con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    out = tmp_path / "out"
    proc = run_cannoli(*(c.format(t=old, o=out) for c in command))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "indexed by another version" in proc.stderr and f"cannoli index {old}" in proc.stderr
    assert not out.exists() and not (tmp_path / "out.drcov").exists()


def test_an_export_answers_registers_and_replay_as_the_trace(guest, tmp_path):
    # the export has no parts index: its Trace reads position windows by SQL
    # over the exported files instead, and must give the same answers,
    # among them the register the guest loads mid-block
    program = guest("registers")
    trace, out = tmp_path / "regs.cannoli", tmp_path / "parquet"
    assert run_cannoli("record", "-o", trace, "--qemu", qemu_under_test("10").bin_dir, program).returncode == 0
    assert run_cannoli("export", "parquet", trace, "-o", out).returncode == 0
    with Trace.open(trace) as t, Trace.open_parquet(out) as p:
        (j,) = [i for i, s in enumerate(t.replay(0, t.end)) if ("rbx", 0x1111111111111101) in s.regs]
        for at in (1, j, t.end // 2, t.end - 1):
            assert p.registers_at(at) == t.registers_at(at)
            assert list(p.replay(at, min(at + 50, t.end))) == list(t.replay(at, min(at + 50, t.end)))
        assert p.registers_at(j)["rbx"] == 0x1111111111111101
