"""`cannoli`: a thin click layer over the Python API.

Data goes to stdout, progress and summaries to stderr; a user error is one line
(click.ClickException) and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import duckdb

from . import __version__, paths
from .output import output_options, write_rows
from .errors import CannoliError


class _Group(click.Group):
    """Turns CannoliError from any command into a one-line click error."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CannoliError as exc:
            raise click.ClickException(str(exc)) from None
        except duckdb.Error as exc:
            # damage DuckDB finds only while reading (a checksum, a short file)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise click.ClickException(f"a trace database is damaged ({first}); "
                                       f"rebuild it with: cannoli index TRACE") from None
        except KeyboardInterrupt:
            # a half-built index is a hidden temporary file, removed by the next `cannoli index`
            click.echo("cannoli: interrupted", err=True)
            raise click.exceptions.Exit(130) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cannoli")
def cli():
    """Cannoli DB: record a Linux program under QEMU and query everything it did.

    Example: cannoli record ./app --flag && cannoli info app.cannoli
    """


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path),
              help="Trace directory to create (default: PROGRAM.cannoli in the current directory).")
@click.option("--no-mem", is_flag=True, help="Do not record memory accesses (blocks, syscalls, threads only).")
@click.option("--no-index", is_flag=True, help="Do not build trace.duckdb after recording.")
@click.option("--qemu", "qemu_path", metavar="PATH",
              help='The qemu-<arch> binary to run, a directory holding it, or "built" (the QEMU 10 that '
                   "`cannoli setup-qemu` built). Default: the settings file's qemu, else PATH.")
@click.option("--regs/--no-regs", "record_regs", default=None,
              help="Record registers at block entry (default: wherever the QEMU can, i.e. QEMU >= 9.0).")
@click.option("--regs-check", is_flag=True,
              help="Diagnostic: read every register at every block (slow) and count, in meta.json's regs_missed, "
                   "the changes that reading only the registers a block writes would have missed.")
@click.option("--inline/--callbacks", "inline_records", default=True, show_default=True,
              help="On a QEMU built with qemu_patches/0004 (`cannoli setup-qemu`): its generated code writes the "
                   "records (fast); --callbacks records through a plugin callback per block and access, as on "
                   "any other QEMU.")
@click.option("-L", "--sysroot", metavar="DIR", help="Sysroot for a dynamically linked foreign-architecture program.")
@click.option("--force", is_flag=True, help="Replace an existing trace directory.")
@click.option("--qemu-option", "qemu_options", multiple=True, metavar="ARG",
              help="Extra QEMU argument, placed before the program (repeatable), e.g. --qemu-option=-cpu --qemu-option=max.")
@click.option("--ring-lanes", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="Per-thread buffers in the shared ring (about 3.3 MiB each); raise for programs with many threads.")
@click.argument("program")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def record(out_dir, no_mem, no_index, qemu_path, record_regs, regs_check, inline_records, sysroot, force,
           qemu_options, ring_lanes, program, args):
    """Run PROGRAM under QEMU and record everything it does.

    Options go before PROGRAM; everything after PROGRAM is passed to it unchanged.
    The program's stdio passes through and cannoli exits with the program's status.

    Example: cannoli record -o run1.cannoli ./app -o out.txt
    """
    from .recorder import RecordOptions, record as do_record, summary

    if out_dir is not None:
        paths.output(out_dir, f"-o {out_dir}", is_dir=True)
    if qemu_path is not None and qemu_path != "built":
        paths.existing(qemu_path, f"--qemu {qemu_path}", hint='give a qemu-<arch> binary, its directory, or "built"')
    if sysroot is not None:
        paths.input_dir(sysroot, f"-L {sysroot}", hint="give the sysroot of the program's libraries")
    opts = RecordOptions(program=program, args=list(args), out_dir=out_dir, record_mem=not no_mem,
                         record_regs=record_regs, regs_check=regs_check, qemu=qemu_path, sysroot=sysroot,
                         force=force, n_lanes=ring_lanes, inline_records=inline_records,
                         qemu_options=list(qemu_options))
    result = do_record(opts)
    click.echo(summary(result), err=True)
    if not no_index:
        _index(result.trace_dir)
    sys.exit(result.exit_status)


def _index(trace: Path) -> None:
    from .index import index_trace

    result = index_trace(trace)
    state = "complete" if result.complete else f"INCOMPLETE: {result.problem or 'the recording did not finish'}"
    click.echo(
        f"cannoli: indexed {result.chunks} chunks into {result.db_path} in {result.seconds:.2f} s: "
        f"{result.instructions:,} instructions, {result.exec_rows:,} block executions, "
        f"{result.mem_rows:,} memory accesses ({state})",
        err=True,
    )


@cli.command()
@click.argument("trace", type=click.Path(path_type=Path))
def index(trace):
    """Build (or rebuild) TRACE/trace.duckdb from the trace's chunk files.

    Example: cannoli index app.cannoli
    """
    _index(paths.trace_dir(trace, writable=True))


@cli.command()
@click.argument("trace", type=click.Path(path_type=Path))
@output_options
def info(trace, fmt):
    """Describe a trace: program, QEMU, completeness, counts and index.

    Example: cannoli info app.cannoli --format json
    """
    from .query.info import describe

    facts = describe(paths.trace_dir(trace))
    if fmt == "json":
        click.echo(json.dumps(dict(facts), indent=2, default=str))
    else:
        write_rows(["item", "detail"], facts, fmt, title=str(trace))


def _open(trace: Path):
    from .query import Trace

    return Trace.open(paths.trace_dir(trace))


@cli.command()
@click.argument("trace", required=False)
@click.argument("query", required=False)
@click.option("--parquet", "parquet_dir", type=click.Path(path_type=Path), metavar="DIR",
              help="Query a Parquet export (cannoli export --format parquet) instead of a trace; then give no TRACE.")
@output_options
def sql(trace, query, parquet_dir, fmt):
    """Run SQL (from QUERY, or stdin) against a trace's tables.

    The trace is opened read-only. Tables and columns: docs/schema.md.

    Example: cannoli sql app.cannoli "SELECT name, count(*) FROM syscalls GROUP BY name"
    """
    if parquet_dir is not None and query is None:
        trace, query = None, trace
    if query is None:
        if sys.stdin.isatty():
            raise click.UsageError("give the SQL as an argument or on stdin")
        query = sys.stdin.read()
    if parquet_dir is not None:
        from .export import parquet_connection
        from .query import Trace

        paths.input_dir(parquet_dir, f"--parquet {parquet_dir}", kind="Parquet export directory",
                        hint="make one with: cannoli export TRACE --format parquet -o DIR")
        t = Trace(parquet_dir, parquet_connection(parquet_dir))
    elif trace is None:
        raise click.UsageError("give a TRACE (or --parquet DIR)")
    else:
        t = _open(Path(trace))
    with t:
        rows = t.sql(query)
    write_rows(rows.columns, rows.rows, fmt)


@cli.command()
@click.argument("trace", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["parquet", "drcov", "tenet"]), required=True,
              help="parquet: every table (a folder); drcov: coverage for Lighthouse/Cartographer; "
                   "tenet: one thread's instructions and memory for Tenet.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True, help="Where to write.")
@click.option("--tid", type=int, help="tenet: the thread to export (default: the first).")
def export(trace, fmt, out, tid):
    """Export a trace for other tools: Parquet, drcov coverage, or a Tenet trace.

    Example: cannoli export app.cannoli --format parquet -o app-parquet/
    """
    from . import export as exporter

    paths.trace_dir(trace)
    paths.output(out, f"-o {out}", is_dir=fmt == "parquet")
    if fmt == "parquet":
        rows = exporter.export_parquet(trace, out)
        summary = f"{len(rows)} tables, {sum(rows.values()):,} rows"
    elif fmt == "drcov":
        modules, blocks = exporter.export_drcov(trace, out)
        summary = f"{modules} modules, {blocks:,} blocks"
    else:
        with _open(trace) as t:
            summary = f"{exporter.export_tenet(t, out, tid):,} instructions"
    click.echo(f"cannoli: exported {trace} as {fmt} to {out}: {summary}", err=True)


def _parse_params(pairs) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CannoliError(f"-p {pair!r} is not key=value, e.g. -p addr=0x4010a0")
        params[key.strip()] = value.strip()
    return params


@cli.command()
@click.argument("trace", type=click.Path(path_type=Path), required=False)
@click.argument("name", required=False)
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="A query parameter (repeatable).")
@click.option("--list", "list_queries", is_flag=True, help="List the named queries and their parameters.")
@output_options
def query(trace, name, params, list_queries, fmt):
    """Run a named query from queries/ (see --list) with -p parameters.

    Example: cannoli query app.cannoli who_wrote -p addr=counter -p size=8
    """
    from .query import named as named_queries

    if list_queries:
        rows = [(q.name, q.area, q.purpose, " ".join(_param_usage(p) for p in q.params), q.example)
                for q in named_queries.catalog().values()]
        write_rows(["name", "area", "purpose", "parameters", "example"], rows, fmt)
        return
    if trace is None or name is None:
        raise click.UsageError("give a TRACE and a query NAME, or --list")
    named_queries.lookup(name)
    with _open(trace) as t:
        rows = t.query(name, **_parse_params(params))
    write_rows(rows.columns, rows.rows, fmt)


def _param_usage(p) -> str:
    return f"{p.name}=<{p.type}>" if p.required else f"[{p.name}={p.default}]"


@cli.command("who-wrote")
@click.argument("trace", type=click.Path(path_type=Path))
@click.argument("address")
@click.option("--size", type=click.IntRange(1), default=1, show_default=True, help="Bytes from ADDRESS to explain.")
@click.option("--before", type=click.IntRange(0), metavar="IDX", help="Only writes before this position (default: end).")
@click.option("--stack", "with_stack", is_flag=True,
              help="Add each writer's callers: its caller, that one's caller, ... (see `cannoli stack`).")
@output_options
def who_wrote(trace, address, size, before, with_stack, fmt):
    """The last write to each byte at ADDRESS (hex or symbol+offset) before a position.

    One row per write that is still visible, with the bytes it covers: a 1-byte
    question inside an 8-byte store names that store.  `symbol` and `line`
    (source file:line) come from the module and its separate debug file, as
    gdb finds them (e.g. /usr/lib/debug/.build-id/, from libc6-dbg).

    Example: cannoli who-wrote app.cannoli counter+4 --size 4 --before 120000 --stack
    """
    with _open(trace) as t:
        writes = t.who_wrote(address, size=size, before=before)
        stacks = [" < ".join(f.symbol for f in t.stack(w.idx, w.tid)[1:]) for w in writes] if with_stack else None
    columns = ["idx", "tid", "pc", "symbol", "addr", "size", "value", "first_byte", "last_byte", "bytes", "line"]
    rows = [tuple(getattr(w, c) for c in columns) for w in writes]
    if stacks is not None:
        columns, rows = columns + ["stack"], [row + (chain,) for row, chain in zip(rows, stacks)]
    write_rows(columns, rows, fmt)
    covered = sum(w.bytes for w in writes)
    if covered < size:
        click.echo(f"cannoli: {size - covered} of {size} bytes have no recorded write before "
                   f"{'the end of the trace' if before is None else f'position {before}'}", err=True)


@cli.command()
@click.argument("trace", type=click.Path(path_type=Path))
@click.option("--at", "at", type=click.IntRange(0), required=True, metavar="IDX", help="The position.")
@click.option("--tid", type=int, help="This thread's stack at its latest instruction up to IDX (default: "
                                      "the thread that ran IDX).")
@output_options
def stack(trace, at, tid, fmt):
    """The call stack at a position, innermost frame first, from the recorded calls and returns.

    Each frame: where it is (the instruction at IDX, then each caller's call
    site), the source line where the module has debug information, and the call
    that entered it (kind signal: a handler entered by a signal).

    Example: cannoli stack app.cannoli --at 120000
    """
    with _open(trace) as t:
        frames = t.stack(at, tid)
    columns = ["level", "pc", "symbol", "source", "kind", "call_idx", "caller_pc", "entry"]
    write_rows(columns, [tuple(getattr(f, c) for c in columns) for f in frames], fmt)


@cli.command()
@click.argument("trace", type=click.Path(path_type=Path))
@click.option("--range", "span", required=True, metavar="START:END",
              help="Positions START (inclusive) to END (exclusive); a side may be empty (1000:), START may be -N (the last N), END may be +N, "
                   "or a symbol/address meaning its first execution (main:).")
@click.option("--tid", type=int, help="Follow one thread only.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for people; json: one object per instruction and line, for tools.")
def replay(trace, span, tid, fmt):
    """Step through the recorded execution, one instruction per line.

    Each line: position, thread, pc, symbol+offset, the instruction (disassembled
    from the recorded bytes), memory reads/writes with values, the source line
    where the DWARF has one (`; file.c:12`; json: "line"), and any syscall.

    Example: cannoli replay app.cannoli --range main:+200 --tid 4242
    """
    from .replay import parse_range

    with _open(trace) as t:
        start, end = parse_range(t, span)
        out = sys.stdout
        render = (lambda s: json.dumps(s.as_dict())) if fmt == "json" else (lambda s: s.text())
        lines = []
        for step in t.replay(start, end, tid):
            lines.append(render(step))
            if len(lines) >= 4096:
                out.write("\n".join(lines) + "\n")
                lines.clear()
        if lines:
            out.write("\n".join(lines) + "\n")


@cli.command("check-registers")
@click.argument("trace", type=click.Path(path_type=Path))
@click.option("--range", "span", default=":", show_default=True, metavar="START:END",
              help="Check the blocks that start in these positions (as for replay).")
@click.option("--workers", type=click.IntRange(0), default=0, show_default=True,
              help="Worker processes (0: one per core).")
@output_options
def check_registers(trace, span, workers, fmt):
    """Re-execute every block from its recorded entry registers and memory values, and compare its
    end state with the next recorded block entry of its thread (and a syscall block's state with the
    syscall's recorded arguments).  Prints the counts per register; stores the result, which
    `cannoli info` shows.

    Example: cannoli check-registers app.cannoli --range 0:1000000
    """
    from .progress import Progress
    from .reexec import check
    from .replay import parse_range

    with _open(trace) as t:
        start, end = parse_range(t, span)
        with Progress("checking registers", check.parts(start, end, workers)) as bar:
            result = check.run(t, start, end, workers, progress=lambda _: bar.advance())
    check.save(trace, result)
    if fmt == "json":
        click.echo(json.dumps(check.as_dict(result), indent=2))
    else:
        write_rows(["register", "mismatches", "unknown at end"], check.rows(result), fmt)
    rate = f"{result.blocks / result.seconds:,.0f} blocks/s" if result.seconds else ""
    click.echo(f"cannoli: registers checked: {result.summary()}; {result.seconds} s, {rate} "
               f"({result.workers} workers)", err=True)


@cli.command()
@click.argument("trace", type=click.Path(path_type=Path))
@click.argument("address")
@click.argument("length", type=click.IntRange(1, 1 << 20))
@click.option("--at", "at", type=click.IntRange(0), metavar="IDX", help="Position (default: the end of the trace).")
@click.option("--format", "fmt", type=click.Choice(["hexdump", "json"]), default="hexdump", show_default=True,
              help="hexdump for people ('??' = unknown); json: a list of byte values, null where unknown.")
def memory(trace, address, length, at, fmt):
    """Show memory at ADDRESS as known at a position, from the recorded accesses.

    Bytes that no recorded access saw before the position are shown as ??.

    Example: cannoli memory app.cannoli --at 120000 counter 32
    """
    from .hexdump import hexdump

    with _open(trace) as t:
        at = t.end if at is None else at
        image = t.memory_at(at, address, length)
    if fmt == "json":
        click.echo(json.dumps({"addr": image.addr, "at": image.at, "bytes": list(image.values)}))
    else:
        click.echo(hexdump(image.addr, image.values))


@cli.command()
@click.argument("trace", type=click.Path(path_type=Path))
@click.option("--listen", metavar="HOST:PORT",
              help="Serve one gdb over TCP (e.g. 127.0.0.1:2345) instead of stdin/stdout.")
@click.option("--at", "at", type=click.IntRange(0), metavar="IDX", help="Start at this position (default: 0).")
@click.option("--tid", type=int, help="Start in this thread (default: the one that runs the start position).")
@click.option("-v", "--verbose", is_flag=True, help="Log every packet to stderr.")
def gdbserver(trace, listen, at, tid, verbose):
    """Debug a recording with gdb: a GDB remote-protocol server over TRACE.

    Breakpoints, watchpoints, stepping and continuing work in both directions
    (reverse-continue, reverse-stepi, ...); memory and registers are those the
    recording holds, and writes are refused.

    Example: gdb -ex 'target remote | cannoli gdbserver app.cannoli' ./app
    """
    from .debug.history import History
    from .debug.server import Session, log_to_stderr, parse_listen, serve_stdio, serve_tcp

    address = parse_listen(listen) if listen else None
    log = log_to_stderr if verbose else None
    with _open(trace) as t:
        session = Session.open(History(t), at, tid)
        if address is None:
            serve_stdio(session, log)
        else:
            serve_tcp(session, *address, lambda line: click.echo(line, err=True), log)


@cli.command("setup-qemu")
@click.option("--targets", default="x86_64,aarch64", show_default=True, metavar="LIST",
              help="Comma-separated QEMU linux-user targets to build.")
@click.option("-j", "--jobs", type=click.IntRange(1), metavar="N", help="Parallel compile jobs (default: the CPU count).")
@click.option("--force", is_flag=True, help="Rebuild even if the cache holds this build.")
def setup_qemu(targets, jobs, force):
    """Build QEMU 10 (Debian 13 source + qemu_patches/) once; print its bin directory.

    The first build takes a few minutes; later calls check Debian's version (~1 s)
    and reuse the cache (docs/qemu10.md).

    Example: cannoli record --qemu "$(cannoli setup-qemu)/qemu-x86_64" ./app
    """
    import os

    from .recorder import qemu_build

    wanted = qemu_build.parse_targets(targets)
    result = qemu_build.build(wanted, jobs=jobs or os.cpu_count() or 1, force=force)
    click.echo(qemu_build.summary(result), err=True)
    click.echo(result.bin_dir)


def main() -> None:
    cli(prog_name="cannoli")


if __name__ == "__main__":
    main()
