"""Named queries: the `.sql` files under `queries/`, their headers and parameters.

Each file starts with a header of `-- key: value` comment lines::

    -- name: who_wrote
    -- purpose: one line
    -- param addr: address          description
    -- param size: integer = 1      description
    -- columns: idx, tid, ...
    --   (indented lines continue the key above)
    -- example: cannoli query app.cannoli who_wrote -p addr=counter
    -- window: latest writes           (optional: see below)

A memory query over an address range names its access path with `window:`
(latest writes, latest accesses, earliest accesses, earliest reads): it then
reads the relation `mem_window`, the accesses near `$addr`/`$size` that the
store's address index finds (query/window.py), instead of scanning `mem`.
`window: registers` gives a query of registers at a position `$at` the
relations `here_window` (the instruction at `$at`: idx, tid, pc, block_id,
n), `regs_window` and `regs_keys_window` (that thread's rows of `regs` and
`regs_keys` within a keyframe's reach before `$at`), read through the store's
`parts` index.

Parameter types: `address` (hex, decimal, or `[module!]symbol[+offset]`,
resolved against the trace), `integer` (decimal or 0x-hex) and `text`.  A
default of `null` passes NULL, which the query treats as "not given".  The SQL
refers to parameters as `$name` (DuckDB named parameters).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Callable

from ..errors import CannoliError

PARAM_TYPES = ("address", "integer", "text")
WINDOWS = ("latest writes", "latest accesses", "earliest accesses", "earliest reads", "registers")
_HEADER_LINE = re.compile(r"--\s?(\w+)(?:\s+(\w+))?:\s*(.*)$")
_PARAM_SPEC = re.compile(r"(\w+)(?:\s*=\s*(\S+))?\s*(.*)$")


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: str | None  # as written in the header; None: required
    description: str

    @property
    def required(self) -> bool:
        return self.default is None

    @property
    def usage(self) -> str:
        """How `cannoli query --list` shows it: `addr=<address>`, or `[size=1]` with its default."""
        return f"{self.name}=<{self.type}>" if self.required else f"[{self.name}={self.default}]"


@dataclass(frozen=True)
class NamedQuery:
    name: str
    area: str
    purpose: str
    params: tuple[Param, ...]
    columns: str
    example: str
    sql: str = field(repr=False)
    window: str | None = None

    def bind(self, given: dict[str, str], resolve_address: Callable[[str], int]) -> dict[str, object]:
        """The DuckDB parameters for user-given text values (checked, converted, defaults filled)."""
        known = {p.name for p in self.params}
        unknown = sorted(set(given) - known)
        if unknown:
            takes = ", ".join(p.name for p in self.params) or "no parameters"
            raise CannoliError(f"query {self.name} has no parameter {unknown[0]!r}; it takes: {takes}")
        bound = {}
        for p in self.params:
            if p.name in given:
                bound[p.name] = convert(p, given[p.name], resolve_address)
            elif p.required:
                raise CannoliError(f"query {self.name} needs -p {p.name}=... ({p.type}: {p.description})")
            else:
                bound[p.name] = None if p.default == "null" else convert(p, p.default, resolve_address)
        return bound


def convert(p: Param, text: str, resolve_address: Callable[[str], int]) -> object:
    if p.type == "text":
        return text
    if p.type == "address":
        return resolve_address(text)
    try:
        return int(text.replace("_", ""), 0)
    except ValueError:
        raise CannoliError(f"parameter {p.name} must be an integer (decimal or 0x-hex), not {text!r}") from None


def parse(text: str, area: str, source: str) -> NamedQuery:
    header: dict[str, str] = {}
    params: list[Param] = []
    last_key = None
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        match = _HEADER_LINE.match(line)
        if match and match[1] == "param" and match[2]:
            spec = _PARAM_SPEC.match(match[3])
            ptype, default, description = spec[1], spec[2], spec[3].strip()
            if ptype not in PARAM_TYPES:
                raise ValueError(f"{source}: parameter {match[2]} has unknown type {ptype!r}")
            params.append(Param(match[2], ptype, default, description))
            last_key = None
        elif match and not match[2]:
            last_key = match[1]
            header[last_key] = match[3].strip()
        elif last_key and line.startswith("--   "):
            header[last_key] += "\n" + line[2:].strip()
        else:
            last_key = None
    missing = [k for k in ("name", "purpose", "columns", "example") if k not in header]
    if missing:
        raise ValueError(f"{source}: header lacks {', '.join(missing)}")
    window = header.get("window")
    if window is not None and window not in WINDOWS:
        raise ValueError(f"{source}: unknown window {window!r} (known: {', '.join(WINDOWS)})")
    return NamedQuery(header["name"], area, header["purpose"], tuple(params), header["columns"],
                      header["example"], text, window)


@lru_cache(maxsize=1)
def catalog() -> dict[str, NamedQuery]:
    """Every shipped query by name (names are unique across areas)."""
    root = resources.files("cannoli_db.queries")
    found: dict[str, NamedQuery] = {}
    for area_dir in sorted(root.iterdir(), key=lambda p: p.name):
        if not area_dir.is_dir() or area_dir.name.startswith(("_", ".")):
            continue
        for entry in sorted(area_dir.iterdir(), key=lambda p: p.name):
            if entry.name.endswith(".sql"):
                query = parse(entry.read_text(), area_dir.name, f"queries/{area_dir.name}/{entry.name}")
                if query.name != entry.name.removesuffix(".sql"):
                    raise ValueError(f"queries/{area_dir.name}/{entry.name} is named {query.name}: name the file "
                                     f"after the query")
                if query.name in found:
                    raise ValueError(f"two queries are named {query.name}")
                found[query.name] = query
    return found


def listing():
    """`cannoli query --list`: one row per query (a query.Rows)."""
    from .trace import Rows

    return Rows(["name", "area", "purpose", "parameters", "example"],
                [(q.name, q.area, q.purpose, " ".join(p.usage for p in q.params), q.example)
                 for q in catalog().values()])


def lookup(name: str) -> NamedQuery:
    queries = catalog()
    short = name.rsplit("/", 1)[-1]
    if short not in queries:
        raise CannoliError(f"no query named {name!r}; list them with: cannoli query --list")
    return queries[short]
