"""Writing results: the one place that renders a command's answer on stdout.

`--format` means the same on every command that prints data (output_options):

* table -- for people: rich, as wide as the terminal; addresses and raw values
  in hex (the columns cannoli_db.hex_columns marks), everything else as is;
* csv -- a header, then one line per row;
* json -- the answer as one JSON document: an array of row objects, or, for a
  command whose answer is one record (info, check-registers, memory), that
  record as an object;
* jsonl -- one JSON object per row.

The machine formats keep numbers exact.  A command with a text rendering of
its own (replay's text, memory's hexdump) offers it as one more choice of the
same option, its default.  Rows are written as they come: an answer of any
length is written in bounded memory (a table, in tables of TABLE_ROWS rows).
Nested values (replay's accesses) are JSON in a table cell or a csv field.
"""

from __future__ import annotations

import csv
import json
import sys
from itertools import islice
from typing import Callable, Collection, Iterable, Mapping, Sequence

import click

FORMATS = ("table", "csv", "json", "jsonl")
TABLE_ROWS = 10_000  # rows per rich table; a longer answer is several tables
LINES = 4096         # lines per write of a text view


def output_options(func=None, *, views: Sequence[str] = ()):
    """The --format option of a command that prints data: its own text views, the
    first the default, then FORMATS.  Use as @output_options or @output_options(views=("text",))."""

    def decorate(f):
        choices = (*views, *FORMATS)
        people = " and ".join((*views, "table"))
        return click.option("--format", "fmt", type=click.Choice(choices), default=choices[0], show_default=True,
                            help=f"Output format: {people} for people; csv, json and jsonl keep values "
                                 f"exact (docs/queries.md, Output formats).")(f)

    return decorate(func) if func is not None else decorate


def write_rows(columns: Sequence[str], rows: Iterable[Sequence], fmt: str, title: str | None = None, *,
               hex: Collection[str] = (), views: Mapping[str, Callable[[], Iterable[str]]] | None = None,
               record: Mapping | None = None) -> None:
    """Write an answer in `fmt`: `rows` of `columns` (`hex`: the columns shown in hex in a table),
    `views[fmt]()`'s lines for a command's own text views, `record` for json when the answer is one
    record."""
    out = sys.stdout
    if views and fmt in views:
        _write_lines(out, views[fmt]())
    elif fmt == "json" and record is not None:
        _write_json_record(out, record)
    elif fmt == "json":
        _write_json_array(out, columns, rows)
    elif fmt == "jsonl":
        _write_lines(out, (json.dumps(dict(zip(columns, row)), default=_json_default) for row in rows))
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_field(v) for v in row])
    elif fmt == "table":
        _write_tables(out, columns, rows, frozenset(hex), title)
    else:
        raise click.UsageError(f"--format {fmt} is not one of {', '.join((*(views or ()), *FORMATS))}")


def write_result(result, fmt: str, title: str | None = None) -> None:
    """Write a query.Rows (or anything with columns, rows and hex)."""
    write_rows(result.columns, result.rows, fmt, title, hex=result.hex)


def _json_default(value):
    """What JSON has no type for: bytes as hex, anything else (a date, a decimal) as its text."""
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return str(value)


def _field(value) -> str:
    """A csv field or table cell of a value that is not an address."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(",", ":"), default=_json_default)
    return str(value)


def _cell(value, is_hex: bool) -> str:
    if is_hex and isinstance(value, int) and not isinstance(value, bool):
        return hex(value)
    return _field(value)


def _write_lines(out, lines: Iterable[str]) -> None:
    lines = iter(lines)
    while batch := list(islice(lines, LINES)):
        out.write("\n".join(batch) + "\n")


def _write_json_record(out, record: Mapping) -> None:
    """One key per line, each value compact (memory's list of a million bytes stays one line)."""
    items = [f"  {json.dumps(str(k))}: {json.dumps(v, default=_json_default)}" for k, v in record.items()]
    out.write("{\n" + ",\n".join(items) + "\n}\n" if items else "{}\n")


def _write_json_array(out, columns: Sequence[str], rows: Iterable[Sequence]) -> None:
    """What json.dump(list, indent=1) writes, one row at a time."""
    first = True
    for row in rows:
        item = json.dumps(dict(zip(columns, row)), indent=1, default=_json_default).replace("\n", "\n ")
        out.write(("[\n " if first else ",\n ") + item)
        first = False
    out.write("[]\n" if first else "\n]\n")


def _write_tables(out, columns: Sequence[str], rows: Iterable[Sequence], hex_columns: frozenset[str],
                  title: str | None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    is_hex = [c in hex_columns for c in columns]
    # a pipe gets every column at full width, a terminal gets its own width
    console = Console(file=out, width=None if out.isatty() else 100_000)
    rows = iter(rows)
    batch = list(islice(rows, TABLE_ROWS))
    while True:
        table = Table(title=title)
        for c in columns:
            table.add_column(Text(c))
        for row in batch:
            # Text, not str: data such as "[stack]" must not be read as rich markup
            table.add_row(*(Text(_cell(v, h)) for v, h in zip(row, is_hex)))
        console.print(table)
        batch, title = list(islice(rows, TABLE_ROWS)), None
        if not batch:
            return
