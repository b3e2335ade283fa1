"""The query stage: `cannoli_db.Trace` over an indexed trace -- SQL, named
queries, who-wrote, memory and registers at a position, names for addresses."""

from .trace import Memory, Rows, Trace, Write

__all__ = ["Memory", "Rows", "Trace", "Write"]
