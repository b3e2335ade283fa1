"""The guest's initial address space, from QEMU's own page dump.

The plugin API does not tell a plugin where QEMU put the guest's stack or the
vsyscall/vdso page.  QEMU's `-d page` log does: right after loading the
program it prints every guest mapping with its protection, then `start_stack`,
`brk`, `entry` and friends.  The recorder asks for that log in a file inside
the trace directory; the plugin silences the log at the first translated block
(QEMU would otherwise dump the whole layout again after every guest mmap), and
the recorder parses the one section into meta.json (`initial_layout`) and
deletes the file.

The log is QEMU's output, so it is read with bounds: at most MAX_LOG_BYTES,
and lines that do not parse are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

LOG_NAME = ".qemu-layout.log"
MAX_LOG_BYTES = 1 << 20
MAX_REGIONS = 4096
_SECTION = "page layout changed following binary load"
_REGION = re.compile(r"^([0-9a-f]{1,16})-([0-9a-f]{1,16}) [0-9a-f]{1,16} ([r-][w-][x-])$")
_FACT = re.compile(r"^(start_brk|end_code|start_code|start_data|end_data|start_stack|brk|entry)\s+0x([0-9a-f]{1,16})$")


def qemu_args(log: Path, qemu_options: list[str]) -> list[str]:
    """QEMU options that produce the log, or none if the user chose their own logging
    or the path cannot be passed as a plugin option (QEMU splits those on commas)."""
    if any(o in ("-d", "-D") or o.startswith(("-d=", "-D=")) for o in qemu_options) or "," in str(log):
        return []
    return ["-d", "page", "-D", str(log)]


def parse(log: Path) -> dict | None:
    """{"regions": [[start, end, "r-x"], ...], "start_stack": ..., ...} or None."""
    try:
        with open(log, "rb") as f:
            text = f.read(MAX_LOG_BYTES).decode("ascii", "replace")
    except OSError:
        return None
    lines = text.splitlines()
    try:
        first = lines.index(_SECTION) + 2  # skip the column header
    except ValueError:
        return None
    regions: list[list] = []
    facts: dict[str, int] = {}
    for line in lines[first:]:
        region = _REGION.match(line)
        fact = _FACT.match(line)
        if region and not facts and len(regions) < MAX_REGIONS:
            start, end = int(region[1], 16), int(region[2], 16)
            if start < end:
                regions.append([start, end, region[3]])
        elif fact:
            facts[fact[1]] = int(fact[2], 16)
        elif facts or line.startswith("page layout"):
            break
    return {"regions": regions, **facts} if regions else None
