"""Cannoli DB: a record-and-replay trace database for Linux programs.

`cannoli record ./app` runs a program under QEMU user-mode emulation with the
Cannoli DB plugin and keeps everything it did; see README.md and docs/.
"""

__version__ = "0.1.0"
