#!/usr/bin/env python3
"""Generate the per-architecture syscall tables from the kernel UAPI headers
that Debian's compilers ship (linux-libc-dev and its -cross variants), through
each compiler's own preprocessor: `<triple>-gcc -E -dM` on <asm/unistd.h>,
then every __NR_<name> macro is evaluated to its number.

Writes cannoli_db/syscall_tables/<arch>.py (number -> name, for the indexer),
cannoli_db/syscall_tables/<arch>_abi.py (the constants, errno and signal
numbers and struct layouts that cannoli_db/syscall_render.py needs to print a
call as strace does), cannoli_db/syscall_tables/errno_messages.py (strerror
texts by errno name) and qemu_patches/plugin/syscall_tables.h (the plugin's
per-target tables: which arguments are path strings, which point to buffers
the kernel reads or writes and how long they are, and the rt_sigaction number).

Constants are evaluated by each cross compiler itself: a unit that includes the
kernel header and lists the macros is compiled to an object file, and the
values are read back from its data (pyelftools), so expressions such as
`_IOR('T', 0x30, unsigned int)` or `(__O_TMPFILE | O_DIRECTORY)` come out as
the target's own numbers.

Run from the repository root after installing the cross compilers:
    .venv/bin/python tools/gen_syscall_tables.py
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from elftools.elf.elffile import ELFFile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cannoli_db.arch import ARCHES  # noqa: E402 (from the checkout this script is in)

TARGETS = {a.name: (a.compiler, list(a.compiler_flags)) for a in ARCHES.values()}  # arch -> (compiler, flags)
OUT = ROOT / "cannoli_db" / "syscall_tables"
PLUGIN_TABLES = ROOT / "qemu_patches" / "plugin" / "syscall_tables.h"

# syscalls whose arguments (0-based) are path strings
PATH_ARGS = {
    "open": (0,), "stat": (0,), "lstat": (0,), "stat64": (0,), "lstat64": (0,), "access": (0,), "execve": (0,),
    "truncate": (0,), "truncate64": (0,), "chdir": (0,), "rename": (0, 1), "mkdir": (0,), "rmdir": (0,),
    "creat": (0,), "link": (0, 1), "unlink": (0,), "symlink": (0, 1), "readlink": (0,), "chmod": (0,),
    "chown": (0,), "lchown": (0,), "mknod": (0,), "statfs": (0,), "statfs64": (0,), "chroot": (0,),
    "inotify_add_watch": (1,), "openat": (1,), "mkdirat": (1,), "fchownat": (1,), "newfstatat": (1,),
    "fstatat64": (1,), "unlinkat": (1,), "renameat": (1, 3), "linkat": (1, 3), "symlinkat": (0, 2),
    "readlinkat": (1,), "fchmodat": (1,), "faccessat": (1,), "utimensat": (1,), "renameat2": (1, 3),
    "memfd_create": (0,), "execveat": (1,), "statx": (1,), "openat2": (1,), "faccessat2": (1,),
}
# where rt_sigaction's struct sigaction keeps the handler: (offset, size) in bytes
SIGACTION_HANDLER = {"x86_64": (0, 8), "aarch64": (0, 8), "riscv64": (0, 8), "arm": (0, 4), "mipsel": (4, 4)}
# Arguments that point to memory the kernel reads (at entry) or writes (copied
# at return), and how many bytes: ("arg", i) the value of argument i, ("ret",)
# the return value, ("iov", i) an iovec array of argument-i elements, or a
# struct named in STRUCTS (its size on the target).  The plugin never copies
# more than that, nor more than CN_MAX_BLOB_ITEM.
BUFFER_ARGS = {
    "write": [(1, "entry", "arg", 2)], "pwrite64": [(1, "entry", "arg", 2)], "sendto": [(1, "entry", "arg", 2)],
    "writev": [(1, "entry", "iov", 2)], "pwritev": [(1, "entry", "iov", 2)],
    "read": [(1, "return", "ret")], "pread64": [(1, "return", "ret")], "recvfrom": [(1, "return", "ret")],
    "readv": [(1, "return", "iov", 2)], "preadv": [(1, "return", "iov", 2)],
    "getrandom": [(0, "return", "ret")], "readlink": [(1, "return", "ret")], "readlinkat": [(2, "return", "ret")],
    "fstat": [(1, "return", "stat")], "stat": [(1, "return", "stat")], "lstat": [(1, "return", "stat")],
    "newfstatat": [(2, "return", "stat")], "fstat64": [(1, "return", "stat64")],
    "stat64": [(1, "return", "stat64")], "lstat64": [(1, "return", "stat64")],
    "fstatat64": [(2, "return", "stat64")], "statx": [(4, "return", "statx")],
    "rt_sigaction": [(1, "entry", "sigaction"), (2, "return", "sigaction")],
    "rt_sigprocmask": [(1, "entry", "arg", 3), (2, "return", "arg", 3)],
    "prlimit64": [(2, "entry", "rlimit64"), (3, "return", "rlimit64")],
    "uname": [(0, "return", "utsname")], "wait4": [(1, "return", "int")],
    "clone3": [(0, "entry", "arg", 1)], "openat2": [(2, "entry", "arg", 3)],
}
# The kernel's struct sigaction is not in the UAPI headers (arch/*/include/asm/
# signal.h of the kernel source): byte offsets of handler, flags, restorer (-1:
# none), mask, and the struct's size, per target.
SIGACTION_LAYOUT = {
    "x86_64": {"handler": 0, "flags": 8, "restorer": 16, "mask": 24, "word": 8, "flags_size": 8, "size": 32},
    "aarch64": {"handler": 0, "flags": 8, "restorer": 16, "mask": 24, "word": 8, "flags_size": 8, "size": 32},
    "riscv64": {"handler": 0, "flags": 8, "restorer": -1, "mask": 16, "word": 8, "flags_size": 8, "size": 24},
    "arm": {"handler": 0, "flags": 4, "restorer": 8, "mask": 12, "word": 4, "flags_size": 4, "size": 20},
    "mipsel": {"handler": 4, "flags": 0, "restorer": -1, "mask": 8, "word": 4, "flags_size": 4, "size": 24},
}
# Struct fields the renderer reads: (C type, [fields]); offsets and sizes come from the compiler.
STRUCTS = {
    "stat": ("struct stat", ["st_mode", "st_size", "st_rdev"]),
    "stat64": ("struct stat64", ["st_mode", "st_size", "st_rdev"]),
    "statx": ("struct statx", ["stx_mask", "stx_attributes", "stx_mode", "stx_size", "stx_rdev_major",
                               "stx_rdev_minor"]),
    "rlimit64": ("struct rlimit64", ["rlim_cur", "rlim_max"]),
    "utsname": ("struct new_utsname", ["sysname", "nodename", "release", "version", "machine", "domainname"]),
    "iovec": ("struct iovec", ["iov_base", "iov_len"]),
    "clone_args": ("struct clone_args", ["flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
                                         "stack_size", "tls"]),
    "open_how": ("struct open_how", ["flags", "mode", "resolve"]),
}
# Constant groups: (kernel header, macro-name pattern).  Every macro of the
# header whose name matches and whose value the compiler can compute is kept;
# a macro defined as another macro's name (EWOULDBLOCK -> EAGAIN) is an alias
# and left out, as strace's own tables do.
GROUPS = {
    "ERRNO": ("asm/errno.h", r"E[A-Z0-9]+"),
    "SIGNALS": ("asm/signal.h", r"SIG(?!_|RTMAX|STKSZ)[A-Z]+[0-9]*"),
    "SIGPROCMASK_HOW": ("asm/signal.h", r"SIG_(BLOCK|UNBLOCK|SETMASK)"),
    "SIG_HANDLERS": ("asm/signal.h", r"SIG_(DFL|IGN|ERR)"),
    "SA_FLAGS": ("asm/signal.h", r"SA_(?!RESTART_MASK)[A-Z_]+"),
    "NSIG": ("asm/signal.h", r"_NSIG"),
    "OPEN_FLAGS": ("linux/fcntl.h", r"O_[A-Z]+|__O_[A-Z]+|FASYNC"),
    "AT_FLAGS": ("linux/fcntl.h", r"AT_[A-Z_]+"),
    "FCNTL_CMDS": ("linux/fcntl.h", r"F_(?!OWNER_|SEAL_|RDLCK|WRLCK|UNLCK|EXLCK|SHLCK|LINUX_)[A-Z_0-9]+"),
    "FD_FLAGS": ("linux/fcntl.h", r"FD_CLOEXEC"),
    "PROT": ("asm/mman.h", r"PROT_[A-Z_]+"),
    "MAP": ("linux/mman.h", r"MAP_[A-Z_0-9]+"),
    "CLONE": ("linux/sched.h", r"CLONE_[A-Z_]+|CSIGNAL"),
    "FUTEX": ("linux/futex.h", r"FUTEX_[A-Z_0-9]+"),
    "IOCTLS": ("asm/ioctls.h", r"(?!TIOCPKT_|TIOCSER_)(TC|TIOC|FIO)[A-Z0-9_]+"),
    "RLIMITS": ("asm/resource.h", r"RLIMIT_[A-Z]+|RLIM64_INFINITY"),
    "GRND": ("linux/random.h", r"GRND_[A-Z]+"),
    "S_IF": ("linux/stat.h", r"S_IF[A-Z]+"),
    "STATX": ("linux/stat.h", r"STATX_(?!ATTR_)[A-Z_]+"),
    "ARCH_PRCTL": ("asm/prctl.h", r"ARCH_[A-Z_0-9]+"),
    "SEEK": ("linux/fs.h", r"SEEK_[A-Z]+"),
    "WAIT": ("linux/wait.h", r"W[A-Z]+"),
    "IOC": ("asm/ioctl.h", r"_IOC_(NONE|READ|WRITE|NRBITS|TYPEBITS|SIZEBITS|DIRBITS)"),
}
# The libc's <unistd.h> holds the access() modes, and its <signal.h> the last
# signal number (x86's UAPI headers keep _NSIG to the kernel).
LIBC_GROUPS = {"ACCESS": ("unistd.h", r"[FRWX]_OK"), "SIGRTMAX": ("signal.h", r"__SIGRTMAX")}
ABI_HEADERS = ["linux/types.h", "asm/errno.h", "asm/signal.h", "linux/fcntl.h", "asm/mman.h", "linux/sched.h",
               "linux/futex.h", "asm/ioctls.h", "asm/resource.h", "linux/resource.h", "linux/random.h",
               "linux/stat.h", "asm/stat.h", "linux/utsname.h", "linux/uio.h", "linux/wait.h", "linux/fs.h",
               "linux/openat2.h", "asm/ioctl.h", "linux/mman.h"]
_DEFINE = re.compile(r"#define (\w+) (.+)$")


def macros(cc: str, flags: list[str], header: str = "asm/unistd.h", check: bool = True) -> dict[str, str]:
    """The macros that including `header` defines; empty if the target has no
    such header and check is False."""
    source = f"#include <{header}>\n" if header else ""
    proc = subprocess.run([cc, *flags, "-E", "-dM", "-x", "c", "-"], input=source, capture_output=True, text=True,
                          check=check)
    text = proc.stdout if proc.returncode == 0 else ""
    return {m[1]: m[2].strip() for m in map(_DEFINE.match, text.splitlines()) if m}


def evaluate(name: str, defs: dict[str, str], depth: int = 0) -> int | None:
    if depth > 20 or name not in defs:
        return None
    expr = defs[name]
    for ref in set(re.findall(r"[A-Za-z_]\w*", expr)):
        value = evaluate(ref, defs, depth + 1)
        if value is None:
            return None
        expr = re.sub(rf"\b{ref}\b", str(value), expr)
    if not re.fullmatch(r"[\d\s()+\-xXa-fA-FuUlL]+", expr):
        return None
    return int(eval(re.sub(r"(?<=[0-9a-fA-F])[uUlL]+", "", expr)))  # noqa: S307 - digits and + - only


def table(cc: str, flags: list[str]) -> dict[int, str]:
    defs = macros(cc, flags)
    names = {}
    for macro in sorted(defs):
        if macro.startswith("__NR_") and not macro.startswith("__NR_syscalls"):
            number = evaluate(macro, defs)
            if number is not None:
                names.setdefault(number, macro[len("__NR_"):])
    return dict(sorted(names.items()))


def compiled_values(cc: str, flags: list[str], headers: list[str], exprs: list[str]) -> list[int | None]:
    """Each C constant expression's value on the target (unsigned 64-bit), or
    None where the compiler rejects it (a macro this target lacks, a struct
    that is not there)."""
    exprs = list(exprs)
    failed: set[int] = set()
    with tempfile.TemporaryDirectory() as tmp:
        src, obj = Path(tmp) / "abi.c", Path(tmp) / "abi.o"
        for _ in range(20):
            lines = [f"#include <{h}>" for h in headers] + ["unsigned long long cn_values[] = {"]
            first = len(lines) + 1
            lines += [f"(unsigned long long)({'0' if i in failed else e})," for i, e in enumerate(exprs)] + ["};"]
            src.write_text("\n".join(lines) + "\n")
            proc = subprocess.run([cc, *flags, "-c", "-w", "-o", str(obj), str(src)], capture_output=True, text=True)
            if proc.returncode == 0:
                break
            bad = {int(m[1]) - first for m in re.finditer(rf"{re.escape(str(src))}:(\d+):\d+: error", proc.stderr)}
            bad = {i for i in bad if 0 <= i < len(exprs)} - failed
            if not bad:
                raise RuntimeError(f"{cc}: cannot compile the constants probe:\n{proc.stderr[-2000:]}")
            failed |= bad
        with open(obj, "rb") as f:
            elf = ELFFile(f)
            (sym,) = elf.get_section_by_name(".symtab").get_symbol_by_name("cn_values")
            data = elf.get_section(sym["st_shndx"]).data()[sym["st_value"]: sym["st_value"] + 8 * len(exprs)]
    values = [int.from_bytes(data[8 * i: 8 * i + 8], "little") for i in range(len(exprs))]
    return [None if i in failed else v for i, v in enumerate(values)]


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def group_names(cc: str, flags: list[str], groups: dict) -> dict[str, list[str]]:
    """The macro names of each group, aliases (a name defined as another name) left out."""
    predefined = macros(cc, flags, "")
    out = {}
    for group, (header, pattern) in groups.items():
        defs = {k: v for k, v in macros(cc, flags, header, check=False).items() if k not in predefined}
        out[group] = sorted(n for n, v in defs.items()
                            if re.fullmatch(pattern, n) and not re.fullmatch(r"[A-Za-z_]\w*", v))
    return out


def abi(arch: str, cc: str, flags: list[str]) -> dict:
    """The constants and struct layouts of one target (see GROUPS, STRUCTS)."""
    kernel = group_names(cc, flags, GROUPS)
    libc = group_names(cc, flags, LIBC_GROUPS)
    struct_exprs = []
    for ctype, fields in STRUCTS.values():
        struct_exprs.append(f"sizeof({ctype})")
        for name in fields:
            struct_exprs += [f"__builtin_offsetof({ctype}, {name})", f"sizeof((({ctype} *)0)->{name})"]
    names = [n for group in kernel.values() for n in group]
    headers = [h for h in ABI_HEADERS + ["asm/prctl.h"] if macros(cc, flags, h, check=False)]
    values = compiled_values(cc, flags, headers, names + struct_exprs + ["sizeof(long)"])
    libc_names = [n for group in libc.values() for n in group]
    libc_values = compiled_values(cc, flags, ["unistd.h", "signal.h"], libc_names)
    value_of = dict(zip(names, values)) | dict(zip(libc_names, libc_values))
    out: dict = {}
    for group, members in (kernel | libc).items():
        found = {n: value_of[n] for n in members if value_of[n] is not None}
        if group in ("ERRNO", "SIGNALS"):
            by_number: dict[int, str] = {}
            for name in sorted(found):  # equal numbers: the first name in alphabetical order, as strace's tables
                by_number.setdefault(found[name], name)
            out[group] = dict(sorted(by_number.items()))
        elif group == "NSIG":
            out[group] = found.get("_NSIG") or value_of["__SIGRTMAX"]  # the kernel counts signals 1.._NSIG
        elif group == "SIGRTMAX":
            continue
        else:
            keep_unsigned = group == "RLIMITS"
            out[group] = dict(sorted(((n, v if keep_unsigned else _signed(v)) for n, v in found.items()),
                                     key=lambda kv: (kv[1], kv[0])))
    rest = iter(values[len(names):])
    structs = {}
    for key, (ctype, fields) in STRUCTS.items():
        size = next(rest)
        layout = {n: (next(rest), next(rest)) for n in fields}
        if size is not None:
            structs[key] = {"size": size, **layout}
    structs["sigaction"] = SIGACTION_LAYOUT[arch]
    out["STRUCTS"] = structs
    out["WORD_SIZE"] = next(rest)
    return out


def _py_value(group: str, value: int) -> str:
    if group in ("ERRNO", "SIGNALS", "NSIG", "WORD_SIZE") or value < 0:
        return str(value)
    return hex(value)


def abi_module(arch: str, cc: str, tables: dict) -> str:
    lines = [f'"""{arch} Linux ABI constants for syscall rendering (cannoli_db/syscall_render.py).',
             "", f"Generated by tools/gen_syscall_tables.py from the kernel UAPI headers of Debian's {cc},",
             'evaluated by that compiler; do not edit."""', ""]
    for group, value in tables.items():
        if isinstance(value, dict) and group == "STRUCTS":
            lines.append("STRUCTS = {  # name -> size and {field: (offset, size)}, bytes")
            for name, layout in value.items():
                lines.append(f"    {name!r}: {layout!r},")
            lines.append("}")
        elif isinstance(value, dict):
            lines.append(f"{group} = {{")
            for k, v in value.items():
                if group in ("ERRNO", "SIGNALS"):
                    lines.append(f"    {k}: {v!r},")
                else:
                    lines.append(f"    {k!r}: {_py_value(group, v)},")
            lines.append("}")
        else:
            lines.append(f"{group} = {value}")
    return "\n".join(lines) + "\n"


def errno_messages(tables: dict[str, dict]) -> str:
    names = sorted({n for t in tables.values() for n in t["ERRNO"].values()})
    body = "\n".join(f"    {n!r}: {os.strerror(getattr(errno, n))!r}," for n in names if hasattr(errno, n))
    return ('"""strerror(3) texts by errno name, as strace prints them after the name.\n\nGenerated by '
            'tools/gen_syscall_tables.py from the build host\'s C library; do not edit."""\n\n'
            f"MESSAGES = {{\n{body}\n}}\n")


LEN_KINDS = {"arg": "CN_LEN_ARG", "ret": "CN_LEN_RET", "iov": "CN_LEN_IOV"}


def buffer_rows(arch: str, numbers: dict[str, int], abi_tables: dict) -> list[str]:
    rows = []
    structs = abi_tables["STRUCTS"]
    iov = structs["iovec"]["size"]
    for name, entries in BUFFER_ARGS.items():
        if name not in numbers:
            continue
        for arg, when, kind, *extra in entries:
            if kind in LEN_KINDS:
                length, len_arg, size = LEN_KINDS[kind], extra[0] if extra else -1, iov if kind == "iov" else 0
            else:
                size = 4 if kind == "int" else structs[kind]["size"]
                length, len_arg = "CN_LEN_FIXED", -1
            rows.append(f"    {{ {numbers[name]}, {arg}, {int(when == 'return')}, {length}, {len_arg}, {size} }},"
                        f" /* {name} */")
    return rows


def tables_nr(names: dict[int, str], name: str) -> int:
    """The number of syscall `name` in one target's table, -1 if it has none."""
    return next((nr for nr, n in names.items() if n == name), -1)


def plugin_tables(tables: dict[str, dict[int, str]], abis: dict[str, dict]) -> str:
    out = ["/* Generated by tools/gen_syscall_tables.py: do not edit. Per QEMU target,",
           " * the syscalls whose arguments are path strings, the arguments that point",
           " * to buffers the kernel reads or writes { nr, arg, at return, length kind,",
           " * length argument, size }, where rt_sigaction keeps the handler and the",
           " * numbers of execve and execveat (plugin_syscall.c). */", "#ifndef CN_SYSCALL_TABLES_H",
           "#define CN_SYSCALL_TABLES_H", ""]
    for arch, names in tables.items():
        numbers = {name: nr for nr, name in names.items()}
        out.append(f"static const struct path_args {arch}_paths[] = {{")
        for name, args in PATH_ARGS.items():
            if name in numbers:
                pair = ", ".join(str(a) for a in (list(args) + [-1])[:2])
                out.append(f"    {{ {numbers[name]}, {{ {pair} }} }}, /* {name} */")
        out.append("};")
        out.append(f"static const struct buffer_arg {arch}_buffers[] = {{")
        out += buffer_rows(arch, numbers, abis[arch])
        out.append("};")
        offset, size = SIGACTION_HANDLER[arch]
        out.append(f"static const struct sigaction_abi {arch}_sigaction = {{ {numbers['rt_sigaction']}, {offset}, {size} }};")
        out.append("")
    out.append("static const struct target_tables target_tables[] = {")
    for arch in tables:
        out.append(f'    {{ "{arch}", {arch}_paths, sizeof({arch}_paths) / sizeof({arch}_paths[0]), {arch}_buffers,')
        out.append(f'      sizeof({arch}_buffers) / sizeof({arch}_buffers[0]), &{arch}_sigaction,')
        out.append(f"      {{ {tables_nr(tables[arch], 'execve')}, {tables_nr(tables[arch], 'execveat')} }} }},")
    out += ["};", "", "#endif", ""]
    return "\n".join(out)


def main() -> None:
    tables, abis = {}, {}
    for arch, (cc, flags) in TARGETS.items():
        names = table(cc, flags)
        tables[arch] = names
        abis[arch] = abi(arch, cc, flags)
        (OUT / f"{arch}_abi.py").write_text(abi_module(arch, cc, abis[arch]))
        if arch == "x86_64":
            continue  # its Python table is cannoli_db/syscall_tables/x86_64.py
        body = "\n".join(f"    {nr}: {name!r}," for nr, name in names.items())
        (OUT / f"{arch}.py").write_text(
            f'"""{arch} Linux syscall numbers and names.\n\nGenerated by tools/gen_syscall_tables.py from '
            f'the kernel UAPI headers of Debian\'s\n{cc} (asm/unistd.h); numbers are what the guest passes to '
            f'its syscall\ninstruction."""\n\nNAMES = {{\n{body}\n}}\n')
        print(f"{arch}: {len(names)} syscalls")
    (OUT / "errno_messages.py").write_text(errno_messages(abis))
    PLUGIN_TABLES.write_text(plugin_tables(tables, abis))


if __name__ == "__main__":
    main()
