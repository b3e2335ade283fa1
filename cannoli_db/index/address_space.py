"""The guest's address space over time: the `mmaps`, `modules` and `symbols`
tables.

Initial layout: QEMU's loader reports where it put the program (PROCESS event:
start of its lowest executable segment -- the entry point it reports is the
interpreter's for a dynamic program); the program's ELF program headers give
its segments, and the first executed block gives the interpreter's load bias.
Later changes come from the syscalls table (mmap, munmap, mprotect, mremap,
brk); a mapping's file comes from the open call that made its descriptor
(path strings are recorded by the plugin), followed through dup, dup2, dup3
and fcntl (fcntl64 on the 32-bit targets).  The MAP_ and F_ constants are
the target's own (cannoli_db.arch): MAP_ANONYMOUS is 0x800 on MIPS.  Modules
are the program, the interpreter and every ELF file mapped at offset 0; their
symbols, and those of their separate debug files (cannoli_db.symbols), are
relocated to where they were loaded.

Program images: a process that exec'd under a QEMU that follows exec has one
image per program, one after the other.  Each image's PROCESS event is in the
stream that the new QEMU started, whose THREAD_START position (the ring's
next position when it started) lies after every instruction of the image
before and at or before every one of its own: that position keys the image
(`image_idx`; 0 for the image a process began with or inherited at fork).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from .. import arch as guest_arch
from .. import format as F
from .. import symbols

PAGE = 4096
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAX_ERRNO = 4095

OPEN_CALLS = {"open": 0, "openat": 1, "creat": 0, "openat2": 1}
DUP_CALLS = {"dup", "dup2", "dup3"}


def page_down(x: int) -> int:
    return x & ~(PAGE - 1)


def page_up(x: int) -> int:
    return (x + PAGE - 1) & ~(PAGE - 1)


def failed(ret) -> bool:
    return ret is None or -MAX_ERRNO <= ret < 0


@dataclass
class ElfImage:
    path: str
    is_dyn: bool
    entry: int
    loads: list  # (vaddr, memsz, offset, prot)
    interp: str | None

    @property
    def code_start(self) -> int:
        """p_vaddr of the lowest executable segment."""
        return min(v for v, _, _, prot in self.loads if prot & PROT_EXEC)

    @property
    def low(self) -> int:
        return min(page_down(v) for v, _, _, _ in self.loads)

    @property
    def high(self) -> int:
        return max(page_up(v + m) for v, m, _, _ in self.loads)


def read_elf(path: str) -> ElfImage | None:
    """The ELF image at `path`, or None if it is missing or not an ELF file."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return None
            f.seek(0)
            elf = ELFFile(f)
            loads, interp = [], None
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_LOAD":
                    flags = seg["p_flags"]
                    prot = (PROT_READ if flags & 4 else 0) | (PROT_WRITE if flags & 2 else 0) | (
                        PROT_EXEC if flags & 1 else 0)
                    loads.append((seg["p_vaddr"], seg["p_memsz"], seg["p_offset"], prot))
                elif seg["p_type"] == "PT_INTERP":
                    interp = seg.get_interp_name()
            if not any(prot & PROT_EXEC for _, _, _, prot in loads):
                return None
            return ElfImage(path, elf["e_type"] == "ET_DYN", elf["e_entry"], loads, interp)
    except (OSError, ELFError, ValueError):
        return None


class _Builder:
    def __init__(self, sysroot: str | None):
        self.sysroot = sysroot
        self.mmaps = []
        self.modules = []  # (pid, path, start, end, bias, kind, image_idx)
        self.images: dict[int, list[int]] = {}  # pid -> image_idx of its exec'd images, ascending

    def host_path(self, guest_path: str) -> str:
        return symbols.host_path(guest_path, self.sysroot)

    def image_at(self, pid: int, idx: int) -> int:
        """image_idx of the program image process pid ran at position idx."""
        starts = self.images.get(pid, [])
        k = bisect.bisect_right(starts, idx)
        return starts[k - 1] if k else 0

    def place(self, pid: int, image: ElfImage, bias: int, kind: str, guest_path: str, image_idx: int) -> None:
        # an exec'd image's initial rows carry the position it began at: they replace the pid's earlier ones
        at = image_idx or None
        for vaddr, memsz, offset, prot in image.loads:
            self.mmaps.append((at, None, pid, "initial", page_down(bias + vaddr), page_up(bias + vaddr + memsz),
                               prot, None, guest_path, page_down(offset)))
        self.modules.append((pid, guest_path, bias + image.low, bias + image.high, bias, kind, image_idx))


def _images(events) -> list[tuple[np.void, int]]:
    """(PROCESS event, image_idx) of every program image, in stream order: the
    recording's program first, then the images that exec'd programs began."""
    ev = events.table()
    started = {int(e["stream"]): int(e["seq"]) for e in ev[ev["kind"] == F.EV_THREAD_START]}
    processes = ev[ev["kind"] == F.EV_PROCESS]
    return [(e, started.get(int(e["stream"]), 0) if k else 0) for k, e in enumerate(processes)]


def _initial_layout(b: _Builder, meta: dict, events) -> None:
    images = _images(events)
    for k, (e, image_idx) in enumerate(images):
        pid = int(e["pid"])
        if image_idx:
            b.images.setdefault(pid, []).append(image_idx)
        recorded = events.blob(e).decode(errors="backslashreplace")
        program = (meta.get("program_path") if k == 0 else None) or recorded
        exe = read_elf(program)  # a program QEMU runs is a host path (-L is for its interpreter)
        if exe is None:
            continue
        start_code, first_pc = int(e["v"][0]) or (_logged_start_code(meta) if k == 0 else 0), int(e["v"][4])
        if not start_code:
            continue  # an unpatched QEMU 10.0 says no start_code, and only the first image has QEMU's page log
        b.place(pid, exe, start_code - exe.code_start, "executable", program, image_idx)
        if exe.interp:
            interp = read_elf(b.host_path(exe.interp))
            if interp is not None:
                b.place(pid, interp, first_pc - interp.entry, "interpreter", exe.interp, image_idx)
        if k == 0 and isinstance(meta.get("initial_layout"), dict):
            _qemu_regions(b, pid, meta["initial_layout"])


def _logged_start_code(meta: dict) -> int:
    """start_code from QEMU's page log, for QEMUs whose plugin API cannot say (10.0)."""
    layout = meta.get("initial_layout")
    value = layout.get("start_code") if isinstance(layout, dict) else None
    return value if isinstance(value, int) else 0


def _qemu_regions(b: _Builder, pid: int, layout: dict) -> None:
    """The mappings QEMU made that no ELF segment explains: the stack and its
    guard page, the vsyscall/vdso page, reservations (cannoli_db/layout_log.py)."""
    images = [(m[4], m[5]) for m in b.mmaps if m[2] == pid and m[0] is None]
    stack, brk = layout.get("start_stack"), layout.get("brk")
    for region in layout.get("regions", []):
        if not (isinstance(region, list) and len(region) == 3):
            continue
        start, end, prot_text = region
        if not (isinstance(start, int) and isinstance(end, int) and isinstance(prot_text, str) and start < end):
            continue
        if any(start < e and s < end for s, e in images):
            continue
        prot = sum(bit for ch, bit in zip(prot_text, (PROT_READ, PROT_WRITE, PROT_EXEC)) if ch != "-")
        name = ("[stack]" if isinstance(stack, int) and start <= stack < end else
                "[heap]" if isinstance(brk, int) and start <= brk < end else
                "[vsyscall]" if start >= 1 << 63 else None)
        b.mmaps.append((None, None, pid, "initial", start, end, prot, None, name, None))


def _changes(b: _Builder, con, guest: guest_arch.Arch) -> None:
    fcntl_calls, dupfd, map_anonymous = set(guest.fcntl_calls), guest.fcntl_dupfd, guest.map_anonymous
    calls = con.execute(
        "SELECT idx, tid, pid, name, arg0, arg1, arg2, arg3, arg4, arg5, ret FROM syscalls "
        "WHERE name IS NOT NULL ORDER BY seq"
    ).fetchall()
    strings = {(idx, arg): value for idx, arg, value in
               con.execute("SELECT idx, arg, value FROM syscall_strings").fetchall()}
    fds: dict[int, dict[int, str]] = {}
    brk_start: dict[tuple[int, int], int] = {}  # per program image: (pid, image_idx)
    brk_now: dict[tuple[int, int], int] = {}
    mapped_at_zero: set[tuple[int, int, str]] = set()
    for idx, tid, pid, name, a0, a1, a2, a3, a4, a5, ret in calls:
        table = fds.setdefault(pid, {})
        image = (pid, b.image_at(pid, idx))
        if name in OPEN_CALLS and not failed(ret):
            table[ret] = strings.get((idx, OPEN_CALLS[name]))
        elif name == "close" and ret == 0:
            table.pop(a0, None)
        elif (name in DUP_CALLS or (name in fcntl_calls and a1 in dupfd)) and not failed(ret):
            table[ret] = table.get(a0)
        elif name in ("mmap", "mmap2") and not failed(ret):
            fd = np.int32(np.uint32(a4 & 0xFFFFFFFF))
            anonymous = bool(a3 & map_anonymous) or fd < 0
            path = None if anonymous else table.get(int(fd))
            offset = a5 * (PAGE if name == "mmap2" else 1)
            b.mmaps.append((idx, tid, pid, "mmap", ret, ret + page_up(a1), a2, a3, path, None if anonymous else offset))
            if path and offset == 0 and (*image, path) not in mapped_at_zero:
                mapped_at_zero.add((*image, path))
                _library(b, image, path, ret)
        elif name == "munmap" and ret == 0:
            b.mmaps.append((idx, tid, pid, "munmap", a0, a0 + page_up(a1), None, None, None, None))
        elif name == "mprotect" and ret == 0:
            b.mmaps.append((idx, tid, pid, "mprotect", a0, a0 + page_up(a1), a2, None, None, None))
        elif name == "mremap" and not failed(ret):
            b.mmaps.append((idx, tid, pid, "mremap", ret, ret + page_up(a2), None, a3, None, None))
        elif name == "brk" and ret is not None:
            # the first brk reports where the heap starts; later ones move its end
            brk_start.setdefault(image, ret)
            if ret != brk_now.get(image, brk_start[image]):
                b.mmaps.append((idx, tid, pid, "brk", brk_start[image], page_up(ret), PROT_READ | PROT_WRITE,
                                None, None, None))
            brk_now[image] = ret


def _library(b: _Builder, image: tuple[int, int], path: str, start: int) -> None:
    elf = read_elf(b.host_path(path))
    if elf is None or not elf.is_dyn:
        return
    bias = start - elf.low
    pid, image_idx = image
    b.modules.append((pid, path, start, bias + elf.high, bias, "library", image_idx))


def _symbols(b: _Builder) -> pa.Table:
    cols = {"pid": [], "module": [], "name": [], "addr": [], "size": [], "kind": []}
    read: dict[str, tuple] = {}  # host path -> (image, symbols): a library shared by many processes is read once
    listed: set[tuple[int, str, int]] = set()  # a program exec'd again at the same place: its symbols once
    for pid, path, _, _, bias, _, _ in b.modules:
        if (pid, path, bias) in listed:
            continue
        listed.add((pid, path, bias))
        host = b.host_path(path)
        if host not in read:
            read[host] = (read_elf(host), symbols.module_symbols(host, b.sysroot))
        image, found = read[host]
        for name, value, size, kind in found:
            cols["pid"].append(pid)
            cols["module"].append(path)
            cols["name"].append(name)
            cols["addr"].append((value + bias) if image and image.is_dyn else value)
            cols["size"].append(size)
            cols["kind"].append(kind)
    return pa.table({
        "pid": pa.array(cols["pid"], pa.uint32()), "module": pa.array(cols["module"], pa.string()),
        "name": pa.array(cols["name"], pa.string()), "addr": pa.array(cols["addr"], pa.uint64()),
        "size": pa.array(cols["size"], pa.uint64()), "kind": pa.array(cols["kind"], pa.string()),
    })


def load(con, meta: dict, events) -> None:
    """Fill mmaps, modules and symbols (the syscalls tables must be loaded)."""
    b = _Builder(meta.get("sysroot"))
    _initial_layout(b, meta, events)
    _changes(b, con, guest_arch.of_meta(meta))
    if b.mmaps:
        con.executemany("INSERT INTO mmaps VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", b.mmaps)
    if b.modules:
        con.executemany("INSERT INTO modules VALUES (?, ?, ?, ?, ?, ?, ?)", b.modules)
    con.register("symbols_rows", _symbols(b))
    con.execute("INSERT INTO symbols SELECT * FROM symbols_rows")
    con.unregister("symbols_rows")
