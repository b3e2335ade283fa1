"""The trace directory: its layout and the files every stage shares.

    TRACE/meta.json                    what was recorded and how it ended
    TRACE/chunks/NNNNNN.zst            the recording (docs/format.md)
    TRACE/chunks/{exec,mem,regs,...}/  the Parquet store of the bulk rows
    TRACE/trace.duckdb                 the index: small tables and summaries

meta.json is written at the start of a recording with complete=false and
rewritten (atomically: temp file, fsync, rename) when the recording ends, so a
trace directory never looks complete unless it is.  Every file here is
written the same way (write_atomically), so a crash leaves whole files only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from . import format as F
from .errors import CannoliError, first_line

META_NAME = "meta.json"
CHUNKS_NAME = "chunks"
DB_NAME = "trace.duckdb"
MAX_META_BYTES = 16 << 20


def chunk_name(seq: int) -> str:
    return f"{seq:06d}.zst"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(final: Path, parts) -> None:
    """Write the byte strings `parts` to `final` through a hidden temporary file:
    fsynced, then renamed, so `final` is always whole or absent.  On failure
    (a full disk) the temporary file is removed and the error re-raised."""
    tmp = final.with_name(f".{final.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, final)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def recording_problem(meta: dict) -> str | None:
    """Why meta.json says the recording is not complete, in words (None if it is)."""
    if meta.get("complete"):
        return None
    if meta.get("interrupted"):
        return "the recording was interrupted"
    return meta.get("incomplete_reason") or meta.get("error") or "the recording did not finish"


def older_format(trace: Path, version: int) -> str:
    """Why a trace recorded in an older record format cannot be indexed."""
    return (f"{trace} was recorded by an older Cannoli DB (record format {version}); this one indexes formats "
            f"{min(F.INDEXABLE_VERSIONS)} and later (positions are drawn while recording): record the program again")


def rebuild_hint(trace: Path | str) -> str:
    """The advice every 'the index is damaged or old' message ends with."""
    return f"rebuild it with: cannoli index {trace}"


def damaged(trace: Path | None, exc: BaseException) -> str:
    """The message for an index that DuckDB found damaged (trace None: not known which)."""
    what = f"{Path(trace) / DB_NAME}" if trace is not None else "a trace database"
    return f"{what} is damaged ({first_line(exc)}); {rebuild_hint(trace if trace is not None else 'TRACE')}"


def default_trace_dir(program: str) -> Path:
    return Path(os.path.basename(program) + ".cannoli")


def create(path: Path, force: bool) -> Path:
    """Make a fresh trace directory; refuses to replace an existing one unless force."""
    if path.exists() or path.is_symlink():
        if not force:
            raise CannoliError(f"{path} already exists; choose another with -o DIR or replace it with --force")
        if not path.is_dir() or path.is_symlink():
            raise CannoliError(f"{path} exists and is not a directory; remove it or choose another with -o DIR")
        if any(path.iterdir()) and not (path / META_NAME).exists():
            raise CannoliError(f"{path} is not a Cannoli DB trace (no {META_NAME}); refusing to delete it with --force")
        _refuse_if_recording(path)
        try:
            shutil.rmtree(path)
        except OSError as exc:
            raise CannoliError(f"cannot remove the old trace {path} for --force: {exc}") from None
    try:
        (path / CHUNKS_NAME).mkdir(parents=True)
    except OSError as exc:
        raise CannoliError(f"cannot create trace directory {path}: {exc.strerror}") from None
    return path


def recorder_alive(meta: dict) -> bool:
    """The recording that meta.json describes is still being written."""
    pid = meta.get("recorder_pid")
    return meta.get("end_time") is None and isinstance(pid, int) and pid > 0 and _running(pid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _refuse_if_recording(path: Path) -> None:
    try:
        meta = read_meta(path)
    except CannoliError:
        return  # damaged or foreign meta.json: nothing says a recorder owns it
    if recorder_alive(meta):
        raise CannoliError(f"{path} is being recorded right now (recorder process {meta['recorder_pid']}); "
                           f"wait for it, stop it, or choose another directory with -o DIR")


# Why a trace has no registers, for each of the plugin's regs_state values
# (enum cn_regs_state, cannoli_ring.h).
_REGS_REASONS = {
    F.REGS_UNSET: "the plugin did not start",
    F.REGS_OFF: "registers were not asked for (--no-regs)",
    F.REGS_NO_API: "QEMU {qemu} (plugin API {api}) gives plugins no register access; registers need QEMU >= 9.0: "
                   "build one with `cannoli setup-qemu`",
    F.REGS_NONE_KNOWN: "QEMU {qemu} offered none of the registers Cannoli DB records for this architecture",
}


def regs_unavailable(state: int, meta: dict) -> str | None:
    """Why the trace has no registers, in words; None when it has them."""
    if state == F.REGS_RECORDED:
        return None
    reason = _REGS_REASONS.get(state, "unknown register state {state}")
    return reason.format(qemu=meta.get("qemu_version"), api=meta.get("plugin_api"), state=state)


def write_meta(path: Path, meta: dict) -> None:
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    write_atomically(Path(path) / META_NAME, (text.encode(),))


class MetaDamaged(CannoliError):
    """meta.json exists but cannot be read as one."""


def read_meta(path: Path) -> dict:
    """meta.json of a trace, checked; a CannoliError names what is wrong."""
    meta_path = Path(path) / META_NAME
    if not Path(path).is_dir():
        raise CannoliError(f"{path}: no such trace directory; record one with: cannoli record PROGRAM")
    try:
        if meta_path.stat().st_size > MAX_META_BYTES:
            raise CannoliError(f"{meta_path}: too large to be a trace's meta.json")
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CannoliError(f"{path}: not a Cannoli DB trace (no {META_NAME})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetaDamaged(f"{meta_path}: damaged ({exc}); `cannoli index` can still index the chunks") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("format_version"), int):
        raise MetaDamaged(f"{meta_path}: damaged (no format_version); `cannoli index` can still index the chunks")
    if meta["format_version"] not in F.READABLE_VERSIONS:
        raise CannoliError(
            f"{path}: trace format version {meta['format_version']}, this Cannoli DB reads versions "
            f"{', '.join(map(str, F.READABLE_VERSIONS))}"
        )
    return meta
