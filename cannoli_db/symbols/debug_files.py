"""Where a module's files are on this host, and its separate debug file, found
the way gdb finds it (gdb manual, "Debugging Information in Separate Files").

First by build ID: `DIR/.build-id/xx/rest.debug` in each global debug directory
DIR, then under the sysroot (`SYSROOT/DIR/.build-id/...`); the file found must
carry the same build ID.  Then by `.gnu_debuglink` (a file name and the CRC-32 of
the debug file): in the module's directory, its `.debug/` subdirectory, the
global debug directory + the module's directory, and, for a module inside the
sysroot, the global debug directory (and the sysroot's) + its directory inside
the sysroot; again with the directory the module's symlink resolves to.  A
candidate whose CRC differs, or that is the module itself, is skipped, as gdb
skips it.

ELF files on disk are untrusted: every length read from them is bounded, and a
damaged file means "no debug file", never an exception.
"""

from __future__ import annotations

import os
import struct
import zlib

from elftools.common.exceptions import DWARFError, ELFError
from elftools.construct.core import ConstructError
from elftools.elf.elffile import ELFFile

DEBUG_DIRS = ("/usr/lib/debug",)  # gdb's default debug-file-directory on Debian
BUILD_ID_DIR = ".build-id"
DEBUG_SUBDIR = ".debug"
MAX_NOTE_SECTION = 4096    # a build-id note is ~36 bytes; larger note sections are not searched
MAX_BUILD_ID = 64          # bytes (GNU ld writes 20: SHA-1)
MAX_DEBUGLINK = 4096 + 8   # file name, padding, CRC
_CRC_BLOCK = 1 << 20
MAX_INFLATION = 1032       # zlib's best ratio: a compressed section claiming more is damaged
# what pyelftools raises for damaged or truncated ELF and DWARF data (it checks
# some fields with assert, and inflates compressed sections with zlib)
ELF_ERRORS = (OSError, ELFError, DWARFError, ConstructError, ValueError, KeyError, IndexError, TypeError,
              AttributeError, OverflowError, AssertionError, struct.error, EOFError, zlib.error)


def host_path(guest_path: str, sysroot: str | None) -> str:
    """Where a guest's file is on this host: under the sysroot when it exists there."""
    if sysroot and guest_path.startswith("/"):
        candidate = os.path.join(sysroot, guest_path.lstrip("/"))
        if os.path.exists(candidate):
            return candidate
    return guest_path


def sections_in_bounds(elf: ELFFile, file_size: int) -> bool:
    """Whether every section lies inside the file and no compressed section claims
    more than its data can inflate to: pyelftools allocates what a header says."""
    try:
        for section in elf.iter_sections():
            if section["sh_type"] == "SHT_NOBITS":
                continue
            if section["sh_offset"] + section["sh_size"] > file_size:
                return False
            if section.compressed and section.data_size > MAX_INFLATION * section["sh_size"]:
                return False
    except ELF_ERRORS:
        return False
    return True


def open_elf(f) -> ELFFile:
    """An ELFFile over an open file, refused (ELFError) when its sections do not fit the file."""
    elf = ELFFile(f)
    if not sections_in_bounds(elf, os.fstat(f.fileno()).st_size):
        raise ELFError(f"{f.name}: a section lies outside the file")
    return elf


def build_id(elf: ELFFile) -> bytes | None:
    """The NT_GNU_BUILD_ID of an ELF file (at least 2 bytes), or None."""
    try:
        for section in elf.iter_sections("SHT_NOTE"):
            if section["sh_size"] > MAX_NOTE_SECTION:
                continue
            for note in section.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                    value = bytes.fromhex(note["n_desc"])
                    return value if 2 <= len(value) <= MAX_BUILD_ID else None
    except ELF_ERRORS:
        return None
    return None


def debuglink(elf: ELFFile) -> tuple[str, int] | None:
    """(file name, CRC-32) of `.gnu_debuglink`, or None; a name with a '/' is refused
    (objcopy writes a base name; a path would let the file look outside the search)."""
    try:
        section = elf.get_section_by_name(".gnu_debuglink")
        if section is None or section["sh_type"] == "SHT_NOBITS" or not 8 <= section["sh_size"] <= MAX_DEBUGLINK:
            return None
        data = section.data()
    except ELF_ERRORS:
        return None
    end = data.find(b"\0")
    if end <= 0:
        return None
    crc_at = (end + 4) & ~3  # the name's NUL, then padding to a 4-byte boundary
    if crc_at + 4 > len(data):
        return None
    name = data[:end].decode("utf-8", "surrogateescape")
    if "/" in name or name in (".", ".."):
        return None
    (crc,) = struct.unpack_from("<I" if elf.little_endian else ">I", data, crc_at)
    return name, crc


def file_crc(path: str) -> int | None:
    """The CRC-32 that `.gnu_debuglink` records (zlib's CRC-32), read in blocks."""
    crc = 0
    try:
        with open(path, "rb") as f:
            while block := f.read(_CRC_BLOCK):
                crc = zlib.crc32(block, crc)
    except OSError:
        return None
    return crc


def find_debug_file(path: str, sysroot: str | None = None, debug_dirs=DEBUG_DIRS) -> str | None:
    """The separate debug file of the ELF file at host path `path`, or None."""
    try:
        with open(path, "rb") as f:
            elf = open_elf(f)
            ident, link = build_id(elf), debuglink(elf)
    except ELF_ERRORS:
        return None
    found = by_build_id(ident, sysroot, debug_dirs) if ident else None
    if found is None and link:
        found = by_debuglink(path, *link, sysroot, debug_dirs)
    return found


def by_build_id(ident: bytes, sysroot: str | None, debug_dirs=DEBUG_DIRS) -> str | None:
    name = os.path.join(BUILD_ID_DIR, ident[:1].hex(), ident[1:].hex() + ".debug")
    for directory in debug_dirs:
        candidates = [os.path.join(directory, name)]
        if sysroot:
            candidates.append(_under(sysroot, candidates[0]))
        for candidate in candidates:
            if _has_build_id(candidate, ident):
                return candidate
    return None


def by_debuglink(path: str, name: str, crc: int, sysroot: str | None, debug_dirs=DEBUG_DIRS) -> str | None:
    directory = os.path.dirname(os.path.abspath(path))
    found = _by_debuglink_in(path, directory, os.path.realpath(directory), name, crc, sysroot, debug_dirs)
    if found is None and os.path.islink(path):
        resolved = os.path.dirname(os.path.realpath(path))
        if resolved != directory:
            found = _by_debuglink_in(path, resolved, resolved, name, crc, sysroot, debug_dirs)
    return found


def _by_debuglink_in(path, directory, canon_dir, name, crc, sysroot, debug_dirs) -> str | None:
    candidates = [os.path.join(directory, name), os.path.join(directory, DEBUG_SUBDIR, name)]
    inside = _inside(os.path.realpath(sysroot), canon_dir) if sysroot else None
    for debug_dir in debug_dirs:
        candidates.append(_under(debug_dir, os.path.join(directory, name)))
        if inside is not None:
            candidates.append(os.path.join(debug_dir, inside, name))
            candidates.append(_under(sysroot, os.path.join(debug_dir, inside, name)))
    for candidate in candidates:
        if _matches_crc(candidate, path, crc):
            return candidate
    return None


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _inside(root: str, path: str) -> str | None:
    """`path` relative to `root` when it lies strictly inside it."""
    relative = os.path.relpath(path, root)
    return None if relative == "." or relative.startswith("..") else relative


def _has_build_id(candidate: str, ident: bytes) -> bool:
    try:
        with open(candidate, "rb") as f:
            return build_id(open_elf(f)) == ident
    except ELF_ERRORS:
        return False


def _matches_crc(candidate: str, module: str, crc: int) -> bool:
    try:
        if os.path.samefile(candidate, module):
            return False
    except OSError:
        return False  # the candidate does not exist
    return file_crc(candidate) == crc
