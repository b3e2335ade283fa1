"""One syscall as strace(1) prints it: `name(args) = result`.

render() is a pure function of what the trace holds for a call: the
architecture, number, name, the six argument words, the return value and the
guest memory the plugin copied (path strings at entry; buffers at entry or
return, CN_BLOB_BUFFER).  It follows strace 6's default output (`-s 32`, no
-v, no -y): strings quoted and escaped as strace's string_quote(), flags by
name, structs abbreviated with `...`, errors as `-1 ENOENT (No such file or
directory)` and `?` for a call that never returned.

Every constant (O_ and MAP_ flags, errno and signal numbers, struct offsets)
comes from the architecture's table generated from its cross compiler's
headers (cannoli_db/syscall_tables/<arch>_abi.py).  A pointer whose contents
the trace does not have is printed as strace prints an unreadable pointer, in
hex.  Calls not decoded here keep a generic form: the name and all six
arguments in hex.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from types import SimpleNamespace
from typing import Callable

from . import arch as guest_arch
from .syscall_tables.errno_messages import MESSAGES

MAX_STRLEN = 32  # strace -s 32 (its default)
MAX_ARRAY = 32  # strace prints at most max_strlen elements of an array
_HEX_RETURNS = {"mmap", "mmap2", "brk", "mremap", "shmat"}
_NO_RETURN = {"exit", "exit_group"}


@dataclass(frozen=True)
class Blob:
    """Guest memory copied for one argument: None if it could not be read."""

    data: bytes | None
    truncated: bool = False  # longer than the plugin's cap: only the prefix


@dataclass(frozen=True)
class Call:
    arch: str
    nr: int
    name: str | None
    args: tuple[int, ...]  # the six argument words as the guest saw them
    ret: int | None  # None: it never returned
    strings: dict[int, Blob] = field(default_factory=dict)  # argument -> path string
    buffers: dict[tuple[int, int], Blob] = field(default_factory=dict)  # (argument, item) -> bytes


def render(call: Call) -> str:
    """The strace line for one call, without pid or timestamp."""
    abi = _abi(call.arch)
    name = call.name or f"syscall_{call.nr:#x}"
    decoder = _DECODERS.get(call.name or "") if abi else None
    ctx = _Ctx(call, abi)
    if decoder is None:
        args = ", ".join(hex(a) for a in call.args)
        return f"{name}({args}) = {_result(ctx, None)}"
    text, rfmt = decoder(ctx), None
    if isinstance(text, tuple):
        text, rfmt = text
    return f"{name}({', '.join(text)}) = {_result(ctx, rfmt)}"


def quote(data: bytes, hex_all: bool = False) -> str:
    """strace's string_quote(): printable ASCII as is, C escapes for \\t \\n \\v
    \\f \\r \\" \\\\, octal for other bytes (three digits when an octal digit
    follows); hex_all (QUOTE_FORCE_HEX) writes every byte as \\xNN."""
    if hex_all:
        return '"' + "".join(f"\\x{b:02x}" for b in data) + '"'
    out = ['"']
    for i, b in enumerate(data):
        if b in _ESCAPES:
            out.append(_ESCAPES[b])
        elif 0x20 <= b <= 0x7E:
            out.append(chr(b))
        elif i + 1 < len(data) and 0x30 <= data[i + 1] <= 0x37:
            out.append(f"\\{b:03o}")
        else:
            out.append(f"\\{b:o}")
    out.append('"')
    return "".join(out)


_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x0B: "\\v"}


@lru_cache(maxsize=None)
def _abi(arch: str) -> SimpleNamespace | None:
    guest = guest_arch.ARCHES.get(arch)
    if guest is None:
        return None  # an architecture without tables: numbers only
    module = guest.abi
    tables = {k: v for k, v in vars(module).items() if k.isupper()}
    ns = SimpleNamespace(**tables)
    ns.word_bits = 8 * module.WORD_SIZE
    ns.sig_number = {name: nr for nr, name in module.SIGNALS.items()}
    ns.rtmin = ns.sig_number.get("SIGRTMIN", 32)
    return ns


_MEMO: dict = {}  # lookups derived from the (module-level, never changed) ABI tables


def _by_value(table: dict[str, int], skip: tuple[str, ...] = ()) -> dict[int, str]:
    """value -> name, the first name in the table's order (by value, then name)."""
    key = ("by_value", id(table), skip)
    if key not in _MEMO:
        out: dict[int, str] = {}
        for name, value in table.items():
            if not name.startswith("__") and not name.startswith(skip):
                out.setdefault(value, name)
        _MEMO[key] = out
    return _MEMO[key]


def _flag_order(table: dict[str, int], skip: tuple[str, ...]) -> list[tuple[str, int]]:
    """Flag names to try: multi-bit names first (O_SYNC before O_DSYNC), masks left out."""
    key = ("flags", id(table), skip)
    if key not in _MEMO:
        named = [(n, v) for n, v in table.items() if v > 0 and not n.startswith("__") and not n.startswith(skip)
                 and "MASK" not in n]
        _MEMO[key] = sorted(named, key=lambda nv: (-bin(nv[1]).count("1"), nv[1]))
    return _MEMO[key]


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


class _Ctx:
    """One call's arguments, as the decoders read them."""

    def __init__(self, call: Call, abi):
        self.call, self.abi = call, abi
        self.args, self.ret = call.args, call.ret
        self.bits = abi.word_bits if abi else 64

    @property
    def failed(self) -> bool:
        return self.ret is None or -4095 <= self.ret < 0

    def int(self, i: int) -> str:
        return str(_signed(self.args[i], 32))

    def uint(self, i: int) -> str:
        return str(self.args[i] & ((1 << self.bits) - 1))

    def long(self, i: int) -> str:
        return str(_signed(self.args[i], self.bits))

    def hex(self, i: int) -> str:
        return hex(self.args[i])

    def ptr(self, i: int) -> str:
        return "NULL" if self.args[i] == 0 else hex(self.args[i])

    def dirfd(self, i: int) -> str:
        value = _signed(self.args[i], 32)
        return "AT_FDCWD" if value == self.abi.AT_FLAGS.get("AT_FDCWD") else str(value)

    def path(self, i: int) -> str:
        blob = self.call.strings.get(i)
        if self.args[i] == 0:
            return "NULL"
        if blob is None or blob.data is None:
            return hex(self.args[i])
        return quote(blob.data) + ("..." if blob.truncated else "")

    def buffer(self, i: int, item: int = 0) -> bytes | None:
        blob = self.call.buffers.get((i, item))
        return None if blob is None else blob.data

    def data(self, i: int, length: int, hex_all: bool = False, item: int = 0, addr: int | None = None) -> str:
        """strace's printstr_ex(): at most -s bytes of a buffer of `length`, then `...`."""
        addr = self.args[i] if addr is None else addr
        if addr == 0:
            return "NULL"
        data = self.buffer(i, item)
        shown = min(length, MAX_STRLEN)
        if data is None or len(data) < shown:
            return hex(addr)
        return quote(data[:shown], hex_all) + ("..." if length > MAX_STRLEN else "")

    def out_data(self, i: int, hex_all: bool = False) -> str:
        """A buffer the call filled: ret bytes, shown after the call returned."""
        if self.failed:
            return self.ptr(i)
        return self.data(i, self.ret, hex_all)

    def struct(self, i: int, name: str, at_return: bool = True) -> dict | None:
        """Fields of a struct argument the trace has; None: print the pointer."""
        layout = self.abi.STRUCTS.get(name)
        data = self.buffer(i)
        if layout is None or data is None or (at_return and self.failed):
            return None
        fields = {}
        for key, where in layout.items():
            if isinstance(where, tuple):
                off, size = where
                if off + size > len(data):
                    return None
                fields[key] = data[off: off + size]
        return fields

    def flags(self, value: int, table: dict[str, int], unknown: str, skip: tuple[str, ...] = ()) -> str:
        return _flags(value, table, unknown, skip)


def _flags(value: int, table: dict[str, int], unknown: str, skip: tuple[str, ...] = ()) -> str:
    """Names of the set bits, lowest first, multi-bit names before their parts;
    bits without a name in hex, as strace's printflags()."""
    if value == 0:
        return "0"
    picked, rest = [], value
    for n, v in _flag_order(table, skip):
        if rest & v == v:
            picked.append((v & -v, n))
            rest &= ~v
    names = [n for _, n in sorted(picked)]
    if not names:
        return f"{value:#x} /* {unknown} */"
    return "|".join(names + ([f"{rest:#x}"] if rest else []))


def _xval(value: int, table: dict[str, int], unknown: str, skip: tuple[str, ...] = ()) -> str:
    """The name of one value, or hex with strace's `/* X_??? */`."""
    name = _by_value(table, skip).get(value)
    return name if name else f"{value:#x} /* {unknown} */"


def _result(ctx: _Ctx, fmt: Callable[[int], str] | None) -> str:
    call, abi = ctx.call, ctx.abi
    if call.ret is None:
        return "?"
    if -4095 <= call.ret < 0:
        name = abi.ERRNO.get(-call.ret) if abi else None
        if name is None:
            return f"-1 (errno {-call.ret})"
        message = MESSAGES.get(name)
        return f"-1 {name} ({message})" if message else f"-1 {name}"
    if fmt is not None:
        return fmt(call.ret)
    if call.name in _HEX_RETURNS:
        return hex(call.ret)
    return str(call.ret)


# ---- struct printers ---------------------------------------------------------------------

def _u(b: bytes) -> int:
    return int.from_bytes(b, "little")


def _mode(abi, mode: int) -> str:
    """strace's print_symbolic_mode_t: the file type, then the permission bits in octal."""
    kind = _by_value(abi.S_IF, ("S_IFMT",)).get(mode & abi.S_IF["S_IFMT"])
    return f"{kind}|{_octal(mode & 0o7777)}" if kind else _octal(mode)


def _makedev(dev: int) -> str:
    major = ((dev >> 8) & 0xFFF) | ((dev >> 32) & ~0xFFF)
    minor = (dev & 0xFF) | ((dev >> 12) & ~0xFF)
    return f"makedev({_hex0(major)}, {_hex0(minor)})"


def _hex0(v: int) -> str:
    return "0" if v == 0 else hex(v)


def _stat(ctx: _Ctx, i: int, struct: str) -> str:
    f = ctx.struct(i, struct)
    if f is None:
        return ctx.ptr(i)
    mode = _u(f["st_mode"])
    if mode & ctx.abi.S_IF["S_IFMT"] in (ctx.abi.S_IF["S_IFCHR"], ctx.abi.S_IF["S_IFBLK"]):
        tail = f"st_rdev={_makedev(_u(f['st_rdev']))}"
    else:
        tail = f"st_size={_u(f['st_size'])}"
    return f"{{st_mode={_mode(ctx.abi, mode)}, {tail}, ...}}"


def _statx(ctx: _Ctx, i: int) -> str:
    f = ctx.struct(i, "statx")
    if f is None:
        return ctx.ptr(i)
    mode = _u(f["stx_mode"])
    mask = _flags(_u(f["stx_mask"]), ctx.abi.STATX, "STATX_???", ("STATX__RESERVED",))
    if mode & ctx.abi.S_IF["S_IFMT"] in (ctx.abi.S_IF["S_IFCHR"], ctx.abi.S_IF["S_IFBLK"]):
        tail = f"stx_rdev_major={_u(f['stx_rdev_major'])}, stx_rdev_minor={_u(f['stx_rdev_minor'])}"
    else:
        tail = f"stx_size={_u(f['stx_size'])}"
    return (f"{{stx_mask={mask}, stx_attributes={_hex0(_u(f['stx_attributes']))}, "
            f"stx_mode={_mode(ctx.abi, mode)}, {tail}, ...}}")


def _sigset_text(abi, data: bytes) -> str:
    """strace's sprintsigmask_n(): names without SIG, `~[...]` when 2/3 or more are set."""
    words = (min(len(data), abi.NSIG // 8) + 3) // 4
    bits = int.from_bytes(data[: 4 * words].ljust(4 * words, b"\0"), "little")
    width = 32 * words
    prefix = ""
    if bin(bits).count("1") >= width * 2 // 3:
        bits, prefix = ~bits & ((1 << width) - 1), "~"
    names = []
    for n in range(width):
        if bits >> n & 1:
            sig = n + 1
            name = abi.SIGNALS.get(sig)
            if name and sig <= abi.rtmin:
                names.append(name[3:])
            elif sig > abi.rtmin:
                names.append(f"RT_{sig - abi.rtmin}")
            else:
                names.append(str(sig))
    return f"{prefix}[{' '.join(names)}]"


def _sigset(ctx: _Ctx, i: int, size: int, at_return: bool) -> str:
    data = ctx.buffer(i)
    if ctx.args[i] == 0:
        return "NULL"
    if data is None or (at_return and ctx.failed) or len(data) < min(size, ctx.abi.NSIG // 8):
        return hex(ctx.args[i])
    return _sigset_text(ctx.abi, data)


def _signal(abi, sig: int) -> str:
    name = abi.SIGNALS.get(sig)
    if name and sig <= abi.rtmin:
        return name
    if abi.rtmin < sig <= abi.NSIG:
        return f"SIGRT_{sig - abi.rtmin}"
    return str(sig)


def _sigaction(ctx: _Ctx, i: int, at_return: bool) -> str:
    layout = ctx.abi.STRUCTS["sigaction"]
    data = ctx.buffer(i)
    if ctx.args[i] == 0:
        return "NULL"
    if data is None or len(data) < layout["size"] or (at_return and ctx.failed):
        return hex(ctx.args[i])
    word = layout["word"]
    handler = _u(data[layout["handler"]: layout["handler"] + word])
    flags = _u(data[layout["flags"]: layout["flags"] + layout["flags_size"]])
    handler_text = _by_value(ctx.abi.SIG_HANDLERS).get(handler) if handler <= 1 else None
    parts = [f"sa_handler={handler_text or hex(handler)}",
             f"sa_mask={_sigset_text(ctx.abi, data[layout['mask']:layout['size']])}",
             f"sa_flags={_flags(flags, ctx.abi.SA_FLAGS, 'SA_???', ('SA_NOMASK', 'SA_ONESHOT', 'SA_STACK'))}"]
    restorer_flag = ctx.abi.SA_FLAGS.get("SA_RESTORER", 0)
    if layout["restorer"] >= 0 and flags & restorer_flag:
        parts.append(f"sa_restorer={hex(_u(data[layout['restorer']: layout['restorer'] + word]))}")
    return "{" + ", ".join(parts) + "}"


def _rlim(value: int) -> str:
    if value == (1 << 64) - 1:
        return "RLIM64_INFINITY"
    if value > 1024 and value % 1024 == 0:
        return f"{value // 1024}*1024"
    return str(value)


def _rlimit(ctx: _Ctx, i: int, at_return: bool) -> str:
    f = ctx.struct(i, "rlimit64", at_return)
    if f is None:
        return ctx.ptr(i)
    return f"{{rlim_cur={_rlim(_u(f['rlim_cur']))}, rlim_max={_rlim(_u(f['rlim_max']))}}}"


def _open_flags(abi, flags: int) -> str:
    table = abi.OPEN_FLAGS
    access = flags & table["O_ACCMODE"]
    mode = {table["O_RDONLY"]: "O_RDONLY", table["O_WRONLY"]: "O_WRONLY", table["O_RDWR"]: "O_RDWR"}.get(access)
    rest = flags & ~table["O_ACCMODE"]
    parts = [mode or f"{access:#x}"]
    if rest:
        others = _flags(rest, table, "O_???", ("O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE", "O_NDELAY"))
        parts.append(others.split(" /* ")[0])
    return "|".join(parts)


def _needs_mode(abi, flags: int) -> bool:
    tmpfile = abi.OPEN_FLAGS.get("O_TMPFILE", 1 << 62)
    return bool(flags & abi.OPEN_FLAGS["O_CREAT"]) or flags & tmpfile == tmpfile


def _octal(value: int) -> str:
    """C's %#03o, as strace prints modes: 0640, 007, 000."""
    return (f"0{value:o}" if value else "0").rjust(3, "0")


# ---- decoders: one per call, argument texts (and how the result prints) ----------------

def _fd(c: _Ctx):
    return [c.int(0)]


def _open(c: _Ctx):
    flags = c.args[1] & 0xFFFFFFFF
    out = [c.path(0), _open_flags(c.abi, flags)]
    return out + ([_octal(c.args[2] & 0o7777)] if _needs_mode(c.abi, flags) else [])


def _openat(c: _Ctx):
    flags = c.args[2] & 0xFFFFFFFF
    out = [c.dirfd(0), c.path(1), _open_flags(c.abi, flags)]
    return out + ([_octal(c.args[3] & 0o7777)] if _needs_mode(c.abi, flags) else [])


def _openat2(c: _Ctx):
    f = c.struct(2, "open_how", at_return=False)
    how = c.ptr(2)
    if f is not None:
        flags = _u(f["flags"])
        how = f"{{flags={_open_flags(c.abi, flags)}"
        how += f", mode={_octal(_u(f['mode']))}" if _needs_mode(c.abi, flags) else ""
        how += f", resolve={_hex0(_u(f['resolve']))}}}"
    return [c.dirfd(0), c.path(1), how, c.uint(3)]


def _write(c: _Ctx):
    return [c.int(0), c.data(1, c.args[2] & ((1 << c.bits) - 1)), c.uint(2)]


def _read(c: _Ctx):
    return [c.int(0), c.out_data(1), c.uint(2)]


def _pread(c: _Ctx):
    return _read(c) + [c.long(3)]


def _pwrite(c: _Ctx):
    return _write(c) + [c.long(3)]


def _iov(c: _Ctx, at_return: bool) -> str:
    """[{iov_base="...", iov_len=N}, ...]: a readv's data up to what it returned."""
    array = c.buffer(1)
    if c.args[1] == 0:
        return "NULL"
    if array is None or (at_return and c.failed):
        return hex(c.args[1])
    word = c.abi.STRUCTS["iovec"]["size"] // 2
    count = min(c.args[2] & 0xFFFFFFFF, len(array) // (2 * word))
    budget = c.ret if at_return else None
    items = []
    for k in range(min(count, MAX_ARRAY)):
        base = _u(array[2 * word * k: 2 * word * k + word])
        length = _u(array[2 * word * k + word: 2 * word * (k + 1)])
        shown = length if budget is None else min(length, budget)
        if budget is not None:
            budget -= shown
        items.append(f"{{iov_base={c.data(1, shown, item=k + 1, addr=base)}, iov_len={length}}}")
    more = ", ..." if count > MAX_ARRAY else ""
    return "[" + ", ".join(items) + more + "]"


def _writev(c: _Ctx):
    return [c.int(0), _iov(c, False), c.int(2)]


def _readv(c: _Ctx):
    return [c.int(0), _iov(c, True), c.int(2)]


def _lseek(c: _Ctx):
    return [c.int(0), c.long(1), _xval(c.args[2], c.abi.SEEK, "SEEK_???", ("SEEK_MAX",))]


def _mmap(c: _Ctx, page_offset: bool = False):
    abi = c.abi
    prot = c.args[2] & 0xFFFFFFFF
    flags = c.args[3] & 0xFFFFFFFF
    kind = flags & abi.MAP["MAP_TYPE"]
    kinds = {v: n for n, v in abi.MAP.items() if n in ("MAP_SHARED", "MAP_PRIVATE", "MAP_SHARED_VALIDATE")}
    rest = flags & ~abi.MAP["MAP_TYPE"]
    flag_text = kinds.get(kind, f"{kind:#x} /* MAP_??? */")
    if rest:
        flag_text += "|" + _flags(rest, abi.MAP, "MAP_???", ("MAP_TYPE", "MAP_SHARED", "MAP_PRIVATE",
                                                            "MAP_HUGE_")).split(" /* ")[0]
    offset = c.args[5] * (4096 if page_offset else 1)
    return [c.ptr(0), c.uint(1), _prot(abi, prot), flag_text, c.int(4), _hex0(offset)]


def _prot(abi, prot: int) -> str:
    return "PROT_NONE" if prot == 0 else _flags(prot, abi.PROT, "PROT_???", ("PROT_NONE",))


def _mprotect(c: _Ctx):
    return [c.ptr(0), c.uint(1), _prot(c.abi, c.args[2] & 0xFFFFFFFF)]


def _munmap(c: _Ctx):
    return [c.ptr(0), c.uint(1)]


def _brk(c: _Ctx):
    return [c.ptr(0)]


def _stat_call(struct: str, path_first: bool):
    def decode(c: _Ctx):
        return [c.path(0) if path_first else c.int(0), _stat(c, 1, struct)]
    return decode


def _fstatat(struct: str):
    def decode(c: _Ctx):
        flags = _flags(c.args[3] & 0xFFFFFFFF, c.abi.AT_FLAGS, "AT_???", ("AT_FDCWD", "AT_EACCESS",
                                                                          "AT_REMOVEDIR", "AT_STATX_"))
        return [c.dirfd(0), c.path(1), _stat(c, 2, struct), flags]
    return decode


def _statx_call(c: _Ctx):
    at = c.args[2] & 0xFFFFFFFF
    sync = at & c.abi.AT_FLAGS.get("AT_STATX_SYNC_TYPE", 0x6000)
    sync_name = _by_value({k: v for k, v in c.abi.AT_FLAGS.items() if k.startswith("AT_STATX_SYNC_")
                           and k != "AT_STATX_SYNC_TYPE"}).get(sync, hex(sync))
    rest = at & ~c.abi.AT_FLAGS.get("AT_STATX_SYNC_TYPE", 0x6000)
    flags = sync_name if not rest else _flags(rest, c.abi.AT_FLAGS, "AT_???", (
        "AT_FDCWD", "AT_EACCESS", "AT_REMOVEDIR", "AT_STATX_")) + "|" + sync_name
    mask = _flags(c.args[3] & 0xFFFFFFFF, c.abi.STATX, "STATX_???", ("STATX__RESERVED",))
    return [c.dirfd(0), c.path(1), flags, mask, _statx(c, 4)]


def _access_mode(abi, mode: int) -> str:
    """F_OK, or R_OK|W_OK|X_OK in that order (strace's), unknown bits in hex."""
    if mode == 0:
        return "F_OK"
    names = [n for n in ("R_OK", "W_OK", "X_OK") if mode & abi.ACCESS[n]]
    rest = mode & ~(abi.ACCESS["R_OK"] | abi.ACCESS["W_OK"] | abi.ACCESS["X_OK"])
    return "|".join(names + ([hex(rest)] if rest else [])) if names else f"{mode:#x} /* ?_OK */"


def _access(c: _Ctx):
    return [c.path(0), _access_mode(c.abi, c.args[1] & 0xFFFFFFFF)]


def _faccessat(c: _Ctx):
    return [c.dirfd(0), c.path(1), _access_mode(c.abi, c.args[2] & 0xFFFFFFFF)]


def _faccessat2(c: _Ctx):
    flags = _flags(c.args[3] & 0xFFFFFFFF, c.abi.AT_FLAGS, "AT_???", ("AT_FDCWD", "AT_REMOVEDIR", "AT_STATX_",
                                                                      "AT_RECURSIVE"))
    return _faccessat(c) + [flags]


def _ioctl(c: _Ctx):
    request = c.args[1] & 0xFFFFFFFF
    name = _by_value(c.abi.IOCTLS).get(request)
    return [c.int(0), name or _ioc(c.abi, request), _hex0(c.args[2])]


def _ioc(abi, code: int) -> str:
    ioc = abi.IOC
    nr_bits, type_bits, size_bits = ioc["_IOC_NRBITS"], ioc["_IOC_TYPEBITS"], ioc["_IOC_SIZEBITS"]
    nr = code & ((1 << nr_bits) - 1)
    kind = (code >> nr_bits) & ((1 << type_bits) - 1)
    size = (code >> (nr_bits + type_bits)) & ((1 << size_bits) - 1)
    direction = code >> (nr_bits + type_bits + size_bits)
    dirs = {k: v for k, v in ioc.items() if k in ("_IOC_NONE", "_IOC_READ", "_IOC_WRITE")}
    dir_text = ("_IOC_NONE" if direction == 0 and dirs.get("_IOC_NONE") == 0 else
                _flags(direction, {k: v for k, v in dirs.items() if v}, "_IOC_???"))
    return f"_IOC({dir_text}, {_hex0(kind)}, {_hex0(nr)}, {_hex0(size)})"


def _clone(c: _Ctx):
    abi = c.abi
    flags_word = c.args[0]
    csignal = abi.CLONE.get("CSIGNAL", 0xFF)
    flags, sig = flags_word & ~csignal, flags_word & csignal
    tls_arg, ctid_arg = (3, 4) if guest_arch.get(c.call.arch).clone_backwards else (4, 3)
    names = [_flags(flags, abi.CLONE, "CLONE_???", ("CSIGNAL", "CLONE_NEWCGROUP", "CLONE_CLEAR_SIGHAND",
                                                    "CLONE_INTO_CGROUP"))] if flags else []
    if sig or not names:
        names.append(_signal(abi, sig) if sig else "0")
    out = [f"child_stack={c.ptr(1)}", f"flags={'|'.join(names)}"]
    has = lambda n: flags & abi.CLONE.get(n, 0)  # noqa: E731
    if has("CLONE_PARENT_SETTID"):
        # the kernel stores the child's tid there, which the call returns
        out.append(f"parent_tid=[{c.ret}]" if c.ret is not None and not c.failed else f"parent_tid={c.ptr(2)}")
    if has("CLONE_SETTLS"):
        out.append(f"tls={c.ptr(tls_arg)}")
    if has("CLONE_CHILD_SETTID") or has("CLONE_CHILD_CLEARTID"):
        out.append(f"child_tidptr={c.ptr(ctid_arg)}")
    return out


def _clone3(c: _Ctx):
    f = c.struct(0, "clone_args", at_return=False)
    if f is None:
        return [c.ptr(0), c.uint(1)]
    abi = c.abi
    flags = _u(f["flags"])
    has = lambda n: flags & abi.CLONE.get(n, 0)  # noqa: E731
    parts = [f"flags={_flags(flags, abi.CLONE, 'CLONE_???', ('CSIGNAL',))}"]
    if has("CLONE_PIDFD"):
        parts.append(f"pidfd={hex(_u(f['pidfd']))}")
    if has("CLONE_CHILD_SETTID") or has("CLONE_CHILD_CLEARTID"):
        parts.append(f"child_tid={hex(_u(f['child_tid']))}")
    if has("CLONE_PARENT_SETTID"):
        parts.append(f"parent_tid={hex(_u(f['parent_tid']))}")
    sig = _u(f["exit_signal"])
    parts += [f"exit_signal={_signal(abi, sig) if sig else 0}", f"stack={hex(_u(f['stack']))}",
              f"stack_size={_hex0(_u(f['stack_size']))}"]
    if has("CLONE_SETTLS"):
        parts.append(f"tls={hex(_u(f['tls']))}")
    text = "{" + ", ".join(parts) + "}"
    if has("CLONE_PARENT_SETTID") and not c.failed:
        text += f" => {{parent_tid=[{c.ret}]}}"
    return [text, c.uint(1)]


def _futex(c: _Ctx):
    abi = c.abi
    op = c.args[1] & 0xFFFFFFFF
    cmd = op & 127
    cmds = {v: n for n, v in abi.FUTEX.items() if not n.startswith("FUTEX_OP_") and v == v & 127
            and not n.endswith("_PRIVATE") and n not in ("FUTEX_32", "FUTEX_WAITV_MAX")}
    op_text = cmds.get(cmd)
    if op_text is None:
        op_text = f"{op:#x} /* FUTEX_??? */"
    else:
        op_text += "_PRIVATE" if op & abi.FUTEX["FUTEX_PRIVATE_FLAG"] else ""
        op_text += "|FUTEX_CLOCK_REALTIME" if op & abi.FUTEX["FUTEX_CLOCK_REALTIME"] else ""
    name = cmds.get(cmd, "")
    val = str(c.args[2] & 0xFFFFFFFF)
    out = [c.ptr(0), op_text]
    bitset = lambda: ("FUTEX_BITSET_MATCH_ANY" if c.args[5] & 0xFFFFFFFF == 0xFFFFFFFF  # noqa: E731
                      else hex(c.args[5] & 0xFFFFFFFF))
    if name in ("FUTEX_WAIT", "FUTEX_WAIT_REQUEUE_PI"):
        out += [val, c.ptr(3)] + ([c.ptr(4)] if name == "FUTEX_WAIT_REQUEUE_PI" else [])
    elif name in ("FUTEX_LOCK_PI", "FUTEX_LOCK_PI2"):
        out += [c.ptr(3)]
    elif name == "FUTEX_WAIT_BITSET":
        out += [val, c.ptr(3), bitset()]
    elif name == "FUTEX_WAKE_BITSET":
        out += [val, bitset()]
    elif name in ("FUTEX_REQUEUE", "FUTEX_CMP_REQUEUE", "FUTEX_CMP_REQUEUE_PI"):
        out += [val, str(c.args[3] & 0xFFFFFFFF), c.ptr(4)]
        out += [str(c.args[5] & 0xFFFFFFFF)] if name != "FUTEX_REQUEUE" else []
    elif name in ("FUTEX_WAKE", "FUTEX_FD"):
        out += [val]
    elif name in ("FUTEX_UNLOCK_PI", "FUTEX_TRYLOCK_PI"):
        pass
    else:
        out += [val, c.ptr(3), c.ptr(4), hex(c.args[5] & 0xFFFFFFFF)]
    return out


def _rt_sigaction(c: _Ctx):
    return [_signal(c.abi, c.args[0] & 0xFFFFFFFF), _sigaction(c, 1, False), _sigaction(c, 2, True), c.uint(3)]


def _rt_sigprocmask(c: _Ctx):
    how = _xval(c.args[0] & 0xFFFFFFFF, c.abi.SIGPROCMASK_HOW, "SIG_???")
    size = c.args[3] & 0xFFFFFFFF
    return [how, _sigset(c, 1, size, False), _sigset(c, 2, size, True), c.uint(3)]


def _exit(c: _Ctx):
    return [c.int(0)]


def _execve(c: _Ctx):
    return [c.path(0), c.ptr(1), c.ptr(2)]  # the trace holds no argv/envp arrays


def _set_tid_address(c: _Ctx):
    return [c.ptr(0)]


def _set_robust_list(c: _Ctx):
    return [c.ptr(0), c.uint(1)]


def _rseq(c: _Ctx):
    return [c.ptr(0), hex(c.args[1] & 0xFFFFFFFF), c.int(2), hex(c.args[3] & 0xFFFFFFFF)]


def _prlimit64(c: _Ctx):
    resource = _xval(c.args[1] & 0xFFFFFFFF, c.abi.RLIMITS, "RLIMIT_???", ("RLIMIT_NLIMITS", "RLIM64_"))
    return [c.int(0), resource, _rlimit(c, 2, False), _rlimit(c, 3, True)]


def _getrandom(c: _Ctx):
    return [c.out_data(0, hex_all=True), c.uint(1), _flags(c.args[2] & 0xFFFFFFFF, c.abi.GRND, "GRND_???")]


def _arch_prctl(c: _Ctx):
    code = c.args[0] & 0xFFFFFFFF
    name = _by_value(c.abi.ARCH_PRCTL).get(code)
    return [name or f"{code:#x} /* ARCH_??? */", c.hex(1)]


def _uname(c: _Ctx):
    f = c.struct(0, "utsname")
    if f is None:
        return [c.ptr(0)]
    sysname = quote(f["sysname"].split(b"\0")[0])
    nodename = quote(f["nodename"].split(b"\0")[0])
    return [f"{{sysname={sysname}, nodename={nodename}, ...}}"]


def _dup2(c: _Ctx):
    return [c.int(0), c.int(1)]


def _dup3(c: _Ctx):
    return [c.int(0), c.int(1), _flags(c.args[2] & 0xFFFFFFFF, {"O_CLOEXEC": c.abi.OPEN_FLAGS["O_CLOEXEC"]},
                                       "O_???")]


def _fcntl(c: _Ctx):
    abi = c.abi
    cmd = c.args[1] & 0xFFFFFFFF
    name = _by_value(abi.FCNTL_CMDS).get(cmd)
    out = [c.int(0), name or f"{cmd:#x} /* F_??? */"]
    rfmt = None
    if name in ("F_GETFD",):
        rfmt = lambda r: "0" if r == 0 else f"{r:#x} (flags {_flags(r, abi.FD_FLAGS, 'FD_???')})"  # noqa: E731
    elif name == "F_GETFL":
        rfmt = lambda r: f"{_hex0(r)} (flags {_open_flags(abi, r)})"  # noqa: E731
    elif name == "F_SETFD":
        out.append(_flags(c.args[2] & 0xFFFFFFFF, abi.FD_FLAGS, "FD_???"))
    elif name == "F_SETFL":
        out.append(_open_flags(abi, c.args[2] & 0xFFFFFFFF))
    elif name in ("F_DUPFD", "F_DUPFD_CLOEXEC", "F_SETOWN", "F_SETSIG", "F_SETPIPE_SZ", "F_SETLEASE",
                  "F_NOTIFY"):
        out.append(c.int(2))
    elif name is None or not name.startswith(("F_GET",)):
        out.append(c.ptr(2))
    return out, rfmt


def _none(c: _Ctx):
    return []


def _readlink(c: _Ctx):
    return [c.path(0), c.out_data(1), c.uint(2)]


def _readlinkat(c: _Ctx):
    return [c.dirfd(0), c.path(1), c.out_data(2), c.uint(3)]


def _sysinfo(c: _Ctx):
    return [c.ptr(0)]  # the trace does not copy struct sysinfo


def _wait4(c: _Ctx):
    status = c.ptr(1)
    data = c.buffer(1)
    if data is not None and len(data) >= 4 and not c.failed:
        status = f"[{_wait_status(c.abi, _u(data[:4]))}]"
    options = _flags(c.args[2] & 0xFFFFFFFF, c.abi.WAIT, "W???")
    return [c.int(0), status, options, c.ptr(3)]


def _wait_status(abi, s: int) -> str:
    if s & 0x7F == 0:
        return f"{{WIFEXITED(s) && WEXITSTATUS(s) == {s >> 8 & 0xFF}}}"
    if s & 0xFF == 0x7F:
        return f"{{WIFSTOPPED(s) && WSTOPSIG(s) == {_signal(abi, s >> 8 & 0xFF)}}}"
    if s == 0xFFFF:
        return "{WIFCONTINUED(s)}"
    core = " && WCOREDUMP(s)" if s & 0x80 else ""
    return f"{{WIFSIGNALED(s) && WTERMSIG(s) == {_signal(abi, s & 0x7F)}{core}}}"


def _path1(c: _Ctx):
    return [c.path(0)]


def _mkdir(c: _Ctx):
    return [c.path(0), _octal(c.args[1] & 0o7777)]


def _unlinkat(c: _Ctx):
    flags = _flags(c.args[2] & 0xFFFFFFFF, {"AT_REMOVEDIR": c.abi.AT_FLAGS["AT_REMOVEDIR"]}, "AT_???")
    return [c.dirfd(0), c.path(1), flags]


def _kill(c: _Ctx):
    return [c.int(0), _signal(c.abi, c.args[1] & 0xFFFFFFFF)]


def _tgkill(c: _Ctx):
    return [c.int(0), c.int(1), _signal(c.abi, c.args[2] & 0xFFFFFFFF)]


_DECODERS: dict[str, Callable] = {
    "open": _open, "openat": _openat, "openat2": _openat2, "creat": _mkdir,
    "read": _read, "write": _write, "pread64": _pread, "pwrite64": _pwrite,
    "readv": _readv, "writev": _writev, "close": _fd, "lseek": _lseek,
    "mmap": _mmap, "mmap2": lambda c: _mmap(c, page_offset=True), "mprotect": _mprotect, "munmap": _munmap,
    "brk": _brk,
    "fstat": _stat_call("stat", False), "stat": _stat_call("stat", True), "lstat": _stat_call("stat", True),
    "newfstatat": _fstatat("stat"), "fstat64": _stat_call("stat64", False), "stat64": _stat_call("stat64", True),
    "lstat64": _stat_call("stat64", True), "fstatat64": _fstatat("stat64"), "statx": _statx_call,
    "access": _access, "faccessat": _faccessat, "faccessat2": _faccessat2, "ioctl": _ioctl,
    "clone": _clone, "clone3": _clone3, "futex": _futex,
    "rt_sigaction": _rt_sigaction, "rt_sigprocmask": _rt_sigprocmask,
    "exit_group": _exit, "exit": _exit, "execve": _execve,
    "set_tid_address": _set_tid_address, "set_robust_list": _set_robust_list, "rseq": _rseq,
    "prlimit64": _prlimit64, "getrandom": _getrandom, "arch_prctl": _arch_prctl, "uname": _uname,
    "dup": _fd, "dup2": _dup2, "dup3": _dup3, "fcntl": _fcntl, "fcntl64": _fcntl,
    "getpid": _none, "gettid": _none, "getppid": _none, "getuid": _none, "geteuid": _none, "getgid": _none,
    "getegid": _none, "sched_yield": _none, "fork": _none, "vfork": _none,
    "readlink": _readlink, "readlinkat": _readlinkat, "sysinfo": _sysinfo, "wait4": _wait4,
    "unlink": _path1, "rmdir": _path1, "chdir": _path1, "mkdir": _mkdir, "unlinkat": _unlinkat,
    "kill": _kill, "tgkill": _tgkill,
}
