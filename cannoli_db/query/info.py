"""What `cannoli info` says about a trace: from meta.json, and from the index
when there is one."""

from __future__ import annotations

from pathlib import Path

from .. import tracedir
from .trace import Trace


def describe(trace: Path) -> list[tuple[str, object]]:
    index = Trace.open(trace) if (Path(trace) / tracedir.DB_NAME).exists() else None
    try:
        return _facts(trace, _meta(trace, index), index)
    finally:
        if index is not None:
            index.close()


def _meta(trace: Path, index: Trace | None) -> dict:
    try:
        return tracedir.read_meta(trace)
    except tracedir.MetaDamaged:
        if index is None:
            raise
        return index.meta  # the index kept what it knew


def _registers_recorded(index: Trace) -> str:
    names = [r[0] for r in index.sql("SELECT reg FROM reg_names ORDER BY n").rows]
    return f"{len(names)} recorded at block entry: {' '.join(names)}" if names else "none"


def _script(meta: dict) -> str | None:
    """A script's #! lines and the ELF that ran it, from meta.json's `script`."""
    script = meta.get("script")
    if not isinstance(script, dict):
        return None
    lines = [f"#!{e.get('interpreter')}" + (f" {e['arg']}" if e.get("arg") else "")
             for e in script.get("chain") or [] if isinstance(e, dict)]
    return f"{script.get('path')} ({'; '.join(lines)}), run by {meta.get('program_path')}"


def _facts(trace: Path, meta: dict, index: Trace | None) -> list[tuple[str, object]]:
    counts = meta.get("counts", {})
    state = "complete" if meta.get("complete") else (
        "interrupted" if meta.get("interrupted") else "INCOMPLETE: " + tracedir.recording_problem(meta))
    facts = [
        ("program", " ".join(meta.get("argv", []))),
        ("arch", meta.get("arch")),
        ("qemu", f"{meta.get('qemu_path')} (QEMU {meta.get('qemu_version')}, plugin API {meta.get('plugin_api')})"),
        ("qemu chosen by", meta.get("qemu_choice") or "(not recorded by this version)"),
        ("records written by", "QEMU's generated code (qemu_patches/0004)" if meta.get("inline_records")
         else "plugin callbacks"),
        ("recording", state),
        ("exit", f"signal {meta['exit_signal_name']}" if meta.get("exit_signal") else meta.get("exit_status")),
        ("memory recorded", meta.get("record_mem")),
        ("started", meta.get("start_time")),
        ("wall time s", meta.get("wall_time_s")),
    ]
    if (script := _script(meta)) is not None:
        facts.insert(1, ("script", script))
    for left in meta.get("left_by_exec") or []:
        facts.append(("not followed", f"process {left['pid']} called exec({left['path'] or '?'}); "
                                      f"what it ran after that is not recorded"))
    if meta.get("exec_note"):
        facts.append(("exec", meta["exec_note"].removeprefix("cannoli: ")))
    facts += [(name.replace("_", " "), counts[name]) for name in
              ("instructions", "blocks_executed", "mem_events", "syscalls", "threads", "processes", "chunks",
               "bytes_on_disk")
              if name in counts]
    if counts.get("instructions"):
        facts.append(("bytes per instruction", round(counts["bytes_on_disk"] / counts["instructions"], 4)))
    if index is not None:
        facts.append(("index", "complete" if index.meta.get("index_complete") else
                      f"INCOMPLETE: {index.meta.get('index_problem') or tracedir.recording_problem(meta)}"))
        rows = dict(index.sql("SELECT tbl, sum(rows) FROM parts GROUP BY tbl").rows)
        for table in ("exec", "mem", "syscalls", "mmaps", "modules", "symbols", "regs"):
            count = rows.get(table) if table in rows or table in ("exec", "mem", "regs") else None
            if count is None and table not in ("exec", "mem", "regs"):
                count = index.sql(f"SELECT count(*) FROM {table}").rows[0][0]
            facts.append((f"rows in {table}", int(count or 0)))
        facts.append(("registers", index.meta.get("regs_unavailable") or _registers_recorded(index)))
        from ..reexec.check import load as registers_check

        facts.append(("registers checked", registers_check(trace) or f"never; run: cannoli check-registers {trace}"))
    else:
        facts.append(("index", f"none; build it with: cannoli index {trace}"))
    return facts
