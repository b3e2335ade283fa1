"""Cannoli DB: a record-and-replay trace database for Linux programs.

`cannoli record ./app` runs a program under QEMU user-mode emulation with the
Cannoli DB plugin and keeps everything it did; see README.md and docs/.
"""

__version__ = "0.1.0"

from .analyze import Analysis, Chunk  # noqa: E402
from .errors import CannoliError  # noqa: E402
from .query import Frame, Memory, Rows, Trace, Write  # noqa: E402

__all__ = ["Analysis", "CannoliError", "Chunk", "Frame", "Memory", "Rows", "Trace", "Write", "__version__"]
