"""Which columns hold addresses or raw values: the ones tables show in hex.

A column is marked where it is defined, once:

* the tables of trace.duckdb (schema.py): `Column(..., info=INFO)`;
* the Parquet store's columns (store.SCHEMAS): Arrow field metadata ARROW;
* the fields of the API's answers (Write, Frame, Step, ...): dataclass field
  metadata, `field(metadata=INFO)`.

For the result of any SQL, a result column is an address when DuckDB's parse
tree (json_serialize_sql) shows that it comes from a marked column: the column
itself, a cast of it, min/max/first/... of it, or it plus or minus a number
(`addr + k` is an address, `"end" - start` is a length), followed through the
aliases of the query's CTEs and subqueries.  A name the tree cannot explain
(`SELECT *`, a statement that is not a SELECT) counts as an address when a
marked column has that name: the schema gives a name one meaning, and
tests/test_output.py checks that it does.  Everything else is decimal.
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from typing import Iterable, Sequence

MARK = "hex"              # the key in Column.info and in dataclass field metadata
INFO = {MARK: True}
ARROW_KEY = b"cannoli_db.hex"
ARROW = {ARROW_KEY: b"true"}

# functions whose result is their first argument's kind (an address stays one)
_KEEPING = {"min", "max", "first", "last", "any_value", "arbitrary", "arg_min", "arg_max", "min_by", "max_by",
            "coalesce", "ifnull", "mode"}


def of_dataclass(cls) -> frozenset[str]:
    """The fields of a dataclass marked with field(metadata=INFO)."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get(MARK))


@lru_cache(maxsize=None)
def schema_names() -> frozenset[str]:
    """The names of the marked columns of trace.duckdb's tables and of the store."""
    from . import schema, store

    names = {c.name for table in schema.metadata.tables.values() for c in table.columns if c.info.get(MARK)}
    names |= {f.name for s in store.SCHEMAS.values() for f in s if (f.metadata or {}).get(ARROW_KEY)}
    return frozenset(names)


def of_sql(query: str, columns: Sequence[str]) -> frozenset[str]:
    """The result columns of `query` (named `columns`) that are addresses or raw values."""
    marked = schema_names()
    node = _last_statement(query)
    if node is not None:
        try:
            return _from_tree(node, columns, marked)
        except (KeyError, TypeError, AttributeError, RecursionError):
            pass  # a tree of a shape this DuckDB writes differently, or nested past Python's stack
    return frozenset(c for c in columns if c in marked)


def _from_tree(node: dict, columns: Sequence[str], marked: frozenset[str]) -> frozenset[str]:
    aliases: dict[str, list[dict]] = {}
    for select in _select_nodes(node):
        for expr in select.get("select_list") or []:
            if expr.get("alias"):
                aliases.setdefault(expr["alias"], []).append(expr)
    select_list = _first_select(node).get("select_list") or []
    resolve = _Resolver(marked, aliases)
    if len(select_list) == len(columns) and not any(e.get("class") == "STAR" for e in select_list):
        return frozenset(c for c, e in zip(columns, select_list) if resolve(e))  # one expression per column
    outputs: dict[str, list[dict]] = {}
    for expr in select_list:
        name = expr.get("alias") or (expr["column_names"][-1] if expr.get("class") == "COLUMN_REF" else None)
        if name:
            outputs.setdefault(name, []).append(expr)

    def is_hex(column: str) -> bool:
        return any(resolve(e) for e in outputs[column]) if column in outputs else resolve.name(column)

    return frozenset(filter(is_hex, columns))


class _Resolver:
    def __init__(self, marked: frozenset[str], aliases: dict[str, list[dict]]):
        self.marked, self.aliases, self.seen = marked, aliases, set()

    def name(self, name: str) -> bool:
        if name in self.marked:
            return True
        if name in self.seen or name not in self.aliases:
            return False
        self.seen.add(name)  # an alias defined in terms of itself ends here
        try:
            return any(self(e) for e in self.aliases[name])
        finally:
            self.seen.discard(name)

    def __call__(self, expr: dict) -> bool:
        kind = expr.get("class")
        if kind == "COLUMN_REF":
            return self.name(expr["column_names"][-1])
        if kind == "CAST":
            return self(expr["child"])
        if kind != "FUNCTION":
            return False
        args = [a["expression"] if "expression" in a else a for a in expr.get("arguments") or expr.get("children") or []]
        function = expr.get("function_name", "").lower()
        if function in _KEEPING and args:
            return self(args[0])
        if function in ("+", "-") and len(args) == 2:
            return sum(map(self, args)) == 1  # a pointer and an offset
        return False


@lru_cache(maxsize=1)
def _parser():
    import duckdb

    return duckdb.connect()  # in memory: parsing reads no table


@lru_cache(maxsize=256)
def _last_statement(query: str) -> dict | None:
    """The parse tree of the query's last statement, None where DuckDB cannot serialise it
    (a syntax error, a statement that is not a SELECT)."""
    import duckdb

    try:
        tree = json.loads(_parser().execute("SELECT json_serialize_sql($q)", {"q": query}).fetchone()[0])
    except (duckdb.Error, ValueError):
        return None
    statements = [] if tree.get("error") else tree.get("statements") or []
    return statements[-1].get("node") if statements else None


def _children(node: dict) -> list[dict]:
    """The query nodes directly inside a set operation (DuckDB >= 1.1: children; before: left, right)."""
    return node.get("children") or [n for n in (node.get("left"), node.get("right")) if n]


def _first_select(node: dict) -> dict:
    """The SELECT that names a query's result columns (a UNION's first one)."""
    while node.get("type") == "SET_OPERATION_NODE" and _children(node):
        node = _children(node)[0]
    return node


def _select_nodes(tree) -> Iterable[dict]:
    """Every SELECT of the tree: CTEs, subqueries, set operations' sides."""
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") == "SELECT_NODE":
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
