"""Cannoli DB: a record-and-replay trace database for Linux programs.

`cannoli record ./app` runs a program under QEMU user-mode emulation with the
Cannoli DB plugin and keeps everything it did; see README.md and docs/.

The names below are imported when first used, so that `cannoli` starts
without loading DuckDB, SQLAlchemy or pyarrow for a command that needs none.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {"Analysis": ".analyze", "Chunk": ".analyze", "CannoliError": ".errors", "Frame": ".query",
            "Memory": ".query", "Rows": ".query", "Trace": ".query", "Write": ".query",
            "Writes": ".query"}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
