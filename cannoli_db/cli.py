"""`cannoli`: a thin click layer over the Python API.

Each command parses its arguments, calls one function of the API and renders
the answer through cannoli_db/output.py (`--format`, the same everywhere).
Data goes to stdout, progress and summaries to stderr; a user error is one line
(click.ClickException) and a non-zero exit status, never a traceback.  An old
spelling still works for one release and says the new one on stderr once the
command has succeeded (_say_after).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from . import __version__, paths
from .output import output_options, write_result, write_rows
from .errors import CannoliError

_NOTES = "cannoli.notes"  # ctx.meta key (shared by nested contexts): lines for stderr after success


def _say_after(note: str, ctx: click.Context | None = None) -> None:
    """A line for stderr once the command has succeeded (an old spelling's new form)."""
    (ctx or click.get_current_context()).meta.setdefault(_NOTES, []).append(note)


class _Group(click.Group):
    """Turns CannoliError from any command into a one-line click error."""

    def invoke(self, ctx):
        try:
            result = super().invoke(ctx)
            for note in ctx.meta.get(_NOTES, ()):
                click.echo(f"cannoli: {note}", err=True)
            return result
        except CannoliError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            if not _is_duckdb_error(exc):
                raise
            # damage DuckDB finds only while reading (a checksum, a short file)
            from .tracedir import damaged

            raise click.ClickException(damaged(None, exc)) from None
        except KeyboardInterrupt:
            # a half-built index is a hidden temporary file, removed by the next `cannoli index`
            click.echo("cannoli: interrupted", err=True)
            raise click.exceptions.Exit(130) from None


def _is_duckdb_error(exc: Exception) -> bool:
    duckdb = sys.modules.get("duckdb")  # only a command that loaded DuckDB can raise its errors
    return duckdb is not None and isinstance(exc, duckdb.Error)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cannoli")
def cli():
    """Cannoli DB: record a Linux program under QEMU and query everything it did.

    Example: cannoli record ./app --flag && cannoli info app.cannoli
    """


class _Size(click.ParamType):
    """A size in bytes: 1000, 64K, 500M, 1.5G (powers of 1024; a trailing B or iB is allowed)."""

    name = "size"
    UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        unit = text[-1:] if text[-1:] in self.UNITS and text[-1:] else ""
        try:
            number = float(text[: len(text) - len(unit)])
        except ValueError:
            number = -1.0
        if not number > 0:
            self.fail(f"{value!r} is not a size: write e.g. 500M or 20G", param, ctx)
        return int(number * self.UNITS[unit])


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path),
              help="Trace directory to create (default: PROGRAM.cannoli in the current directory).")
@click.option("--no-mem", is_flag=True, help="Do not record memory accesses (blocks, syscalls, threads only).")
@click.option("--no-index", is_flag=True, help="Do not build trace.duckdb after recording.")
@click.option("--qemu", "qemu_path", metavar="PATH",
              help='The qemu-<arch> binary to run, a directory holding it, "built" (the QEMU 10 that '
                   '`cannoli setup-qemu` built) or "system" (PATH\'s). Default: the settings file\'s qemu, '
                   "else the built one where there is one for the program's architecture, else PATH's.")
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
@click.option("--no-follow-exec", is_flag=True,
              help="Let the programs the guest execs run natively, unrecorded (by default a QEMU built by "
                   "`cannoli setup-qemu` runs and records them too).")
@click.option("--ring-lanes", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="Per-thread buffers in the shared ring (about 3.3 MiB each); raise for programs with many threads.")
@click.option("--max-size", type=_Size(), metavar="SIZE",
              help="Stop the recording cleanly once its chunks reach SIZE (e.g. 500M, 20G): the guest is stopped "
                   "and the trace, valid, is marked incomplete. A recording also stops when less than 256 MiB "
                   "are left free on the trace's file system.")
@click.option("--progress/--no-progress", default=None,
              help="A live line on stderr while recording (default: when stderr is a terminal).")
@click.argument("program")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def record(out_dir, no_mem, no_index, qemu_path, record_regs, regs_check, inline_records, sysroot, force,
           qemu_options, no_follow_exec, ring_lanes, max_size, progress, program, args):
    """Run PROGRAM under QEMU and record everything it does.

    Options go before PROGRAM; everything after PROGRAM is passed to it unchanged.
    The program's stdio passes through and cannoli exits with the program's status.

    Example: cannoli record -o run1.cannoli ./app -o out.txt
    """
    from .recorder import RecordOptions, record as do_record, summary

    if out_dir is not None:
        paths.output(out_dir, f"-o {out_dir}", is_dir=True)
    if qemu_path is not None and qemu_path not in ("built", "system"):
        paths.existing(qemu_path, f"--qemu {qemu_path}",
                       hint='give a qemu-<arch> binary, its directory, "built" or "system"')
    if sysroot is not None:
        paths.input_dir(sysroot, f"-L {sysroot}", hint="give the sysroot of the program's libraries")
    opts = RecordOptions(program=program, args=list(args), out_dir=out_dir, record_mem=not no_mem,
                         record_regs=record_regs, regs_check=regs_check, qemu=qemu_path, sysroot=sysroot,
                         force=force, n_lanes=ring_lanes, inline_records=inline_records,
                         qemu_options=list(qemu_options), max_size=max_size, progress=progress,
                         follow_exec=not no_follow_exec)
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
    write_rows(["item", "detail"], facts, fmt, title=str(trace), record=dict(facts))


def _open(trace: Path):
    from .query import Trace

    return Trace.open(paths.trace_dir(trace))


@cli.command()
@click.argument("trace", required=False)
@click.argument("query", required=False)
@click.option("--parquet", "parquet_dir", type=click.Path(path_type=Path), metavar="DIR",
              help="Query a Parquet export (cannoli export parquet) instead of a trace; then give no TRACE.")
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
        from .query import Trace

        paths.input_dir(parquet_dir, f"--parquet {parquet_dir}", kind="Parquet export directory",
                        hint="make one with: cannoli export parquet TRACE -o DIR")
        t = Trace.open_parquet(parquet_dir)
    elif trace is None:
        raise click.UsageError("give a TRACE (or --parquet DIR)")
    else:
        t = _open(Path(trace))
    with t:
        rows = t.sql(query)
    write_result(rows, fmt)


class _ExportGroup(click.Group):
    """`cannoli export KIND TRACE -o OUT`; the old `cannoli export TRACE --format KIND -o OUT`
    is rewritten to it (for one release), with a note of the new spelling."""

    def parse_args(self, ctx, args):
        kinds = list(self.commands)  # the subcommands are the kinds
        kind, rest = _old_export_spelling(args)
        if kind is not None:
            if kind not in kinds:
                raise click.BadParameter(f"{kind!r} is not one of {', '.join(kinds)}", ctx=ctx,
                                         param_hint="'--format'")
            args = [kind, *rest]
            _say_after(f"`cannoli export TRACE --format {kind}` is now spelled "
                       f"`{shlex.join(['cannoli', 'export', kind, *rest])}`; the old spelling goes in the next release", ctx)
        elif args and args[0] not in kinds and not args[0].startswith("-"):
            raise click.UsageError(f"say what to export first: cannoli export {{{','.join(kinds)}}} TRACE -o OUT",
                                   ctx)
        return super().parse_args(ctx, args)


def _old_export_spelling(args: list[str]) -> tuple[str | None, list[str]]:
    """(KIND, the other arguments) of `--format KIND` / `--format=KIND` in args, else (None, args)."""
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--format" and i + 1 < len(args):
            return args[i + 1], args[:i] + args[i + 2:]
        if arg.startswith("--format="):
            return arg.split("=", 1)[1], args[:i] + args[i + 1:]
    return None, args


@cli.group(cls=_ExportGroup)
def export():
    """Export a trace for other tools: Parquet, drcov coverage, or a Tenet trace.

    One subcommand per kind (docs/export.md).  The old spelling
    `cannoli export TRACE --format KIND -o OUT` still works in this release.

    Example: cannoli export parquet app.cannoli -o app-parquet/
    """


def _export(kind: str, trace: Path, out: Path, tid: int | None = None) -> None:
    from .export import export as do_export

    paths.trace_dir(trace)
    paths.output(out, f"-o {out}", is_dir=kind == "parquet")
    summary = do_export(kind, trace, out, tid)
    click.echo(f"cannoli: exported {trace} as {kind} to {out}: {summary}", err=True)


_EXPORT_TRACE = click.argument("trace", type=click.Path(path_type=Path))


@export.command("parquet")
@_EXPORT_TRACE
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="The folder to create (or an empty one).")
def export_parquet(trace, out):
    """Every table as Parquet in a folder; exec and mem hive-partitioned by thread and position range.

    Query it back with `cannoli sql --parquet DIR`, or with DuckDB, Spark, Trino.

    Example: cannoli export parquet app.cannoli -o app-parquet/
    """
    _export("parquet", trace, out)


@export.command("drcov")
@_EXPORT_TRACE
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True, help="The file to write.")
def export_drcov(trace, out):
    """Coverage in drcov version 2, for Lighthouse and Cartographer: every executed block of a module.

    Example: cannoli export drcov app.cannoli -o app.drcov
    """
    _export("drcov", trace, out)


@export.command("tenet")
@_EXPORT_TRACE
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True, help="The file to write.")
@click.option("--tid", type=int, help="The thread to export (default: the first).")
def export_tenet(trace, out, tid):
    """One thread's instructions, register changes and memory accesses as a Tenet trace.

    Example: cannoli export tenet app.cannoli -o app.tenet --tid 4242
    """
    _export("tenet", trace, out, tid)


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
        write_result(named_queries.listing(), fmt)
        return
    if trace is None or name is None:
        raise click.UsageError("give a TRACE and a query NAME, or --list")
    named_queries.lookup(name)
    with _open(trace) as t:
        rows = t.query(name, **_parse_params(params))
    write_result(rows, fmt)


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
        writes = t.who_wrote(address, size=size, before=before, stack=with_stack)
    write_result(writes.rows(), fmt)
    _say_now(writes.unwritten_note())


def _say_now(note: str | None) -> None:
    if note:
        click.echo(f"cannoli: {note}", err=True)


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
    from .query import Frame, Rows

    with _open(trace) as t:
        frames = t.stack(at, tid)
    write_result(Rows.of(Frame, frames), fmt)


@cli.command()
@click.argument("trace", type=click.Path(path_type=Path))
@click.option("--range", "span", required=True, metavar="START:END",
              help="Positions START (inclusive) to END (exclusive); a side may be empty (1000:), START may be -N (the last N), END may be +N, "
                   "or a symbol/address meaning its first execution (main:).")
@click.option("--tid", type=int, help="Follow one thread only.")
@output_options(views=("text",))
def replay(trace, span, tid, fmt):
    """Step through the recorded execution, one instruction per line.

    Each line: position, thread, pc, symbol+offset, the instruction (disassembled
    from the recorded bytes), memory reads/writes with values, the source line
    where the DWARF has one (`; file.c:12`; jsonl: "line"), and any syscall.
    The other formats have one row per instruction (docs/replay.md).

    Example: cannoli replay app.cannoli --range main:+200 --tid 4242
    """
    from .hex_columns import of_dataclass
    from .replay import Step

    if fmt == "json":  # until the next release: JSON lines, as before
        fmt = "jsonl"
        _say_after("replay --format json still writes one JSON object per line, as --format jsonl does: say "
                   "jsonl (in the next release json writes one JSON array, as for every command)")
    with _open(trace) as t:
        steps = t.replay(tid=tid, span=span)
        write_rows(Step.COLUMNS, (s.row() for s in steps), fmt, hex=of_dataclass(Step),
                   views={"text": lambda: (s.text() for s in steps)})


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

    with _open(trace) as t:
        start, end = t.positions(span)
        with Progress("checking registers", check.parts(start, end, workers)) as bar:
            result = check.run(t, start, end, workers, progress=lambda _: bar.advance(), keep=True)
    write_rows(["register", "mismatches", "unknown at end"], check.rows(result), fmt, record=check.as_dict(result))
    click.echo(f"cannoli: registers checked: {result.summary()}; {result.timing()}", err=True)


@cli.command()
@click.argument("trace", type=click.Path(path_type=Path))
@click.argument("address")
@click.argument("length", type=click.IntRange(1, 1 << 20))
@click.option("--at", "at", type=click.IntRange(0), metavar="IDX", help="Position (default: the end of the trace).")
@output_options(views=("hexdump",))
def memory(trace, address, length, at, fmt):
    """Show memory at ADDRESS as known at a position, from the recorded accesses.

    Bytes that no recorded access saw before the position are shown as ??
    (hexdump) or null, and counted on stderr.  json: one object, {"addr", "at",
    "bytes": [values, null where unknown]}; table, csv, jsonl: one row per byte.

    Example: cannoli memory app.cannoli --at 120000 counter 32
    """
    from .hexdump import hexdump

    with _open(trace) as t:
        image = t.memory_at(at, address, length)
    rows = image.rows()
    write_rows(rows.columns, rows.rows, fmt, hex=rows.hex, record=image.as_dict(),
               views={"hexdump": lambda: [hexdump(image.addr, image.values)]})
    _say_now(image.unknown_note())


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
        session = Session.open(History(t, at=at), at, tid)
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
    from .native import qemu_build

    wanted = qemu_build.parse_targets(targets)
    result = qemu_build.build(wanted, jobs=jobs, force=force)
    click.echo(qemu_build.summary(result), err=True)
    click.echo(result.bin_dir)


def main() -> None:
    cli(prog_name="cannoli")


if __name__ == "__main__":
    main()
