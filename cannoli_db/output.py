"""Writing results: one place that renders rows as a table (rich, on a terminal),
csv, json or jsonl.  Machine formats keep numbers exact; the table view shows
addresses in hex."""

from __future__ import annotations

import csv
import json
import sys
from typing import Iterable, Sequence

import click

FORMATS = ("table", "csv", "json", "jsonl")

# columns whose numbers are addresses or raw values: hex in the table view
HEX_COLUMNS = {"pc", "caller_pc", "callee_pc", "entry", "sp", "addr", "start", "end", "value", "load_bias", "guest_base", "first_byte", "last_byte", "byte_addr", "arg0", "arg1", "arg2", "arg3",
               "arg4", "arg5"}


def output_options(func):
    """The shared --format option of every command that prints data."""
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="Output format; table is for people, the others keep values exact.")(func)


def _cell(column: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool) and column in HEX_COLUMNS:
        return hex(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return str(value)


def _jsonable(value):
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return value


def write_rows(columns: Sequence[str], rows: Iterable[Sequence], fmt: str, title: str | None = None) -> None:
    out = sys.stdout
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if v is None else _jsonable(v) for v in row])
    elif fmt == "jsonl":
        for row in rows:
            out.write(json.dumps({c: _jsonable(v) for c, v in zip(columns, row)}) + "\n")
    elif fmt == "json":
        json.dump([{c: _jsonable(v) for c, v in zip(columns, row)} for row in rows], out, indent=1)
        out.write("\n")
    else:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title=title)
        for c in columns:
            table.add_column(Text(c))
        for row in rows:
            # Text, not str: data such as "[stack]" must not be read as rich markup
            table.add_row(*(Text(_cell(c, v)) for c, v in zip(columns, row)))
        # a pipe gets every column at full width, a terminal gets its own width
        Console(file=out, width=None if out.isatty() else 100_000).print(table)
