"""The query stage: `cannoli_db.Trace` over an indexed trace -- SQL, named
queries, who-wrote, memory and registers at a position, names for addresses."""

from .trace import Frame, Memory, Rows, Trace, Write, Writes

__all__ = ["Frame", "Memory", "Rows", "Trace", "Write", "Writes"]
