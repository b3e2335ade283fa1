"""The recording process: launches QEMU with the plugin, drains the shared-memory
ring, compresses packets into chunk files and writes meta.json.

Installed as cannoli_db.recorder (a package-dir mapping in pyproject.toml), so
it never collides with a top-level `recorder` module in a user's environment.
"""

from .session import RecordOptions, RecordResult, record, summary

__all__ = ["RecordOptions", "RecordResult", "record", "summary"]
