"""The paths users give -- a trace directory, -o, --parquet, -L, --qemu, the
settings file -- checked before any work starts: each problem (missing, a file
where a directory is needed or the other way round, not readable, not
writable) is one CannoliError line naming the path as the user gave it.

`label` is how the message names the path: the path itself for a positional
argument ("app.cannoli"), the option and the path for an option ("-o out/x").
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import CannoliError


def trace_dir(path, writable: bool = False) -> Path:
    """A trace directory to read (`writable`: and to write its index into)."""
    return input_dir(path, str(path), kind="trace directory", writable=writable,
                     hint="record one with: cannoli record PROGRAM")


def input_dir(path, label: str, kind: str = "directory", writable: bool = False, hint: str = "") -> Path:
    """An existing directory this process can list (and, if `writable`, create files in)."""
    path = Path(path)
    st = _stat(path, label)
    if st is None:
        raise CannoliError(f"{label}: no such {kind}" + (f"; {hint}" if hint else ""))
    if not stat.S_ISDIR(st.st_mode):
        raise CannoliError(f"{label}: is a file, not a {kind}" + (f"; {hint}" if hint else ""))
    if not os.access(path, os.R_OK | os.X_OK):
        raise CannoliError(f"{label}: cannot read this {kind} (permission denied)")
    if writable and not os.access(path, os.W_OK):
        raise CannoliError(f"{label}: cannot write in this {kind} ({_why_not_writable(path)})")
    return path


def input_file(path, label: str, kind: str = "file", hint: str = "") -> Path:
    """An existing regular file (or a link to one) this process can read."""
    path = Path(path)
    st = _stat(path, label)
    if st is None:
        raise CannoliError(f"{label}: no such {kind}" + (f"; {hint}" if hint else ""))
    if stat.S_ISDIR(st.st_mode):
        raise CannoliError(f"{label}: is a directory, not a {kind}" + (f"; {hint}" if hint else ""))
    if not os.access(path, os.R_OK):
        raise CannoliError(f"{label}: cannot read this {kind} (permission denied)")
    return path


def existing(path, label: str, hint: str = "") -> Path:
    """A file or directory that exists (what kind it must be is the caller's question)."""
    path = Path(path)
    if _stat(path, label) is None:
        raise CannoliError(f"{label}: no such file or directory" + (f"; {hint}" if hint else ""))
    return path


def output(path, label: str, is_dir: bool) -> Path:
    """Where a command will write a directory (`is_dir`) or a file.  Missing
    parent directories are made (as mkdir -p would), so the nearest existing
    one must be a directory this process can write in; if the path exists it
    must be of the right kind.  Whether an existing one may be replaced is the
    command's rule."""
    path = Path(path)
    parent = path.parent
    st = _stat(parent, label)
    while st is None and parent != parent.parent:
        parent = parent.parent
        st = _stat(parent, label)
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise CannoliError(f"{label}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CannoliError(f"{label}: cannot write in {parent} ({_why_not_writable(parent)})")
    st = _stat(path, label)
    if st is not None:
        if is_dir and not stat.S_ISDIR(st.st_mode):
            raise CannoliError(f"{label}: is a file, where a directory is written; choose another path")
        if not is_dir and stat.S_ISDIR(st.st_mode):
            raise CannoliError(f"{label}: is a directory, where a file is written; give a file name")
        if is_dir and not os.access(path, os.W_OK | os.X_OK):
            raise CannoliError(f"{label}: cannot write in this directory ({_why_not_writable(path)})")
    return path


def _stat(path: Path, label: str) -> os.stat_result | None:
    """stat() of path, following links; None if nothing is there."""
    try:
        return path.stat()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise CannoliError(f"{label}: {_first_file_above(path)} is a file, not a directory") from None
    except PermissionError:
        raise CannoliError(f"{label}: a directory above it cannot be entered (permission denied)") from None
    except OSError as exc:
        raise CannoliError(f"{label}: {exc.strerror}") from None


def _first_file_above(path: Path) -> Path:
    for above in [*reversed(path.parents), path]:
        if above.exists() and not above.is_dir():
            return above
    return path


def _why_not_writable(path: Path) -> str:
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        pass
    return "permission denied"
