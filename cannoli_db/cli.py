"""`cannoli`: a thin click layer over the Python API.

Data goes to stdout, progress and summaries to stderr; a user error is one line
(click.ClickException) and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import __version__, tracedir
from .output import output_options, write_rows
from .errors import CannoliError


class _Group(click.Group):
    """Turns CannoliError from any command into a one-line click error."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CannoliError as exc:
            raise click.ClickException(str(exc)) from None


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
@click.option("--qemu", "qemu_path", metavar="PATH", help="The qemu-<arch> binary to run (default: from PATH).")
@click.option("-L", "--sysroot", metavar="DIR", help="Sysroot for a dynamically linked foreign-architecture program.")
@click.option("--force", is_flag=True, help="Replace an existing trace directory.")
@click.option("--qemu-option", "qemu_options", multiple=True, metavar="ARG",
              help="Extra QEMU argument, placed before the program (repeatable), e.g. --qemu-option=-cpu --qemu-option=max.")
@click.option("--ring-lanes", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="Per-thread buffers in the shared ring (about 2.6 MiB each); raise for programs with many threads.")
@click.argument("program")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def record(out_dir, no_mem, no_index, qemu_path, sysroot, force, qemu_options, ring_lanes, program, args):
    """Run PROGRAM under QEMU and record everything it does.

    Options go before PROGRAM; everything after PROGRAM is passed to it unchanged.
    The program's stdio passes through and cannoli exits with the program's status.

    Example: cannoli record -o run1.cannoli ./app -o out.txt
    """
    from .recorder import RecordOptions, record as do_record, summary

    opts = RecordOptions(program=program, args=list(args), out_dir=out_dir, record_mem=not no_mem,
                         qemu=qemu_path, sysroot=sysroot, force=force, n_lanes=ring_lanes,
                         qemu_options=list(qemu_options))
    result = do_record(opts)
    click.echo(summary(result), err=True)
    if not no_index:
        _index(result.trace_dir)
    sys.exit(result.exit_status)


def _index(trace: Path) -> None:
    from .indexer import index_trace

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
    _index(trace)


@cli.command()
@click.argument("trace", type=click.Path(path_type=Path))
@output_options
def info(trace, fmt):
    """Describe a trace: program, QEMU, completeness, counts and index.

    Example: cannoli info app.cannoli --format json
    """
    from .trace_info import describe

    facts = describe(trace)
    if fmt == "json":
        click.echo(json.dumps(dict(facts), indent=2, default=str))
    else:
        write_rows(["item", "detail"], facts, fmt, title=str(trace))


def main() -> None:
    cli(prog_name="cannoli")


if __name__ == "__main__":
    main()
