"""What kind of program the user asked to record: its ELF architecture, and so
which qemu-<arch> runs it; for a #! script, the interpreter ELF and the argv
that Linux (fs/binfmt_script.c) would give it."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Sequence

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from cannoli_db import arch as guest_arch
from cannoli_db import paths
from cannoli_db.errors import CannoliError

@dataclass(frozen=True)
class GuestBinary:
    path: str
    arch: str            # its cannoli_db.arch name: x86_64, aarch64, ...
    machine: str         # ELF e_machine
    elf_class: int
    little_endian: bool
    interpreter: str | None  # PT_INTERP of a dynamically linked program


def resolve_program(program: str) -> str:
    """The path of `program`, looked up on PATH like a shell would when it has no '/'."""
    if os.sep not in program:
        found = shutil.which(program)
        if found:
            return found
    paths.input_file(program, program, hint="give the path of the program to record")
    return program


def inspect(program: str) -> GuestBinary:
    """The ELF file `program` (looked up on PATH when it has no '/')."""
    path = resolve_program(program)
    if _head(path, program)[:4] != ELF_MAGIC:
        raise CannoliError(f"{program}: not an ELF executable or a #! script; cannoli records Linux ELF programs")
    return _elf(path, program)


def _elf(path: str, program: str) -> GuestBinary:
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            machine = elf["e_machine"]
            elf_class = elf.elfclass
            little = elf.little_endian
            found = guest_arch.of_elf(elf)
            interp = None
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_INTERP":
                    interp = seg.get_interp_name()
    except ELFError as exc:
        raise CannoliError(f"{program}: damaged ELF file ({exc})") from None
    except OSError as exc:
        raise CannoliError(f"{program}: cannot read ({exc.strerror})") from None
    if found is None:
        raise CannoliError(f"{program}: {machine} ({elf_class}-bit, {'little' if little else 'big'}-endian) "
                           f"is not an architecture Cannoli DB records; it records {guest_arch.supported()}")
    return GuestBinary(path, found.name, machine, elf_class, little, interp)


def _head(path: str, program: str) -> bytes:
    """The first BINPRM_BUF_SIZE bytes of a file: what the kernel looks at to choose how to run it."""
    try:
        with open(path, "rb") as f:
            return f.read(BINPRM_BUF_SIZE)
    except OSError as exc:
        raise CannoliError(f"{program}: cannot read ({exc.strerror})") from None


# ---------------------------------------------------------------- #! scripts

ELF_MAGIC = b"\x7fELF"
BINPRM_BUF_SIZE = 256  # include/uapi/linux/binfmts.h: the kernel reads a #! line from this many bytes
MAX_SCRIPT_DEPTH = 5   # fs/exec.c exec_binprm: a sixth nested #! interpreter is ELOOP
MAX_ENV_EXECS = 8      # env running a script whose #! runs env again: a loop would never end


@dataclass(frozen=True)
class Shebang:
    interpreter: str
    arg: str | None  # Linux passes the rest of the line as one argument, spaces and all


def parse_shebang(head: bytes) -> Shebang:
    """The interpreter and optional argument of a file's first bytes, read as
    fs/binfmt_script.c load_script reads them (Linux >= 5.1): the line ends at a
    newline within BINPRM_BUF_SIZE bytes (else the interpreter name must end within
    them); spaces and tabs separate; a NUL ends a string.  ValueError says why the
    kernel would answer ENOEXEC."""
    buf = bytearray(head[:BINPRM_BUF_SIZE].ljust(BINPRM_BUF_SIZE, b"\0"))
    if buf[:2] != b"#!":
        raise ValueError("no #! line")
    last = BINPRM_BUF_SIZE - 1
    end = buf.find(b"\n")
    if end < 0:
        start = _next_non_spacetab(buf, 2, last)
        if start is None or _next_terminator(buf, start, last) is None:
            raise ValueError(f"its #! line names no interpreter within its first {BINPRM_BUF_SIZE} bytes")
        end = last
    while buf[end - 1] in b" \t":
        end -= 1
    name = _next_non_spacetab(buf, 2, end)
    if name is None or name == end:
        raise ValueError("its #! line names no interpreter")
    sep = _next_terminator(buf, name, end)
    arg = _next_non_spacetab(buf, sep, end) if sep is not None and buf[sep] != 0 else None
    buf[end] = 0
    if arg is not None:
        buf[sep] = 0
    return Shebang(_c_string(buf, name), None if arg is None else _c_string(buf, arg))


def _next_non_spacetab(buf: bytearray, first: int, last: int) -> int | None:
    return next((i for i in range(first, last + 1) if buf[i] not in b" \t"), None)


def _next_terminator(buf: bytearray, first: int, last: int) -> int | None:
    return next((i for i in range(first, last + 1) if buf[i] in b" \t\0"), None)


def _c_string(buf: bytearray, start: int) -> str:
    return os.fsdecode(bytes(buf[start:buf.index(0, start)]))


@dataclass(frozen=True)
class Launch:
    """What `execve(program, [program, *args])` would run: an ELF and its argv."""

    binary: GuestBinary
    argv: tuple[str, ...]   # argv[0] first, as the kernel (and env) build it
    script: dict | None     # meta.json's `script`; None when the program is an ELF file


def launch(program: str, args: Sequence[str]) -> Launch:
    """The ELF that runs `program` with `args`: `program` itself, or, for a #!
    script, its interpreter (nested as the kernel allows; `#!/usr/bin/env CMD`
    resolved to CMD on PATH, as env would, with env dropped)."""
    path = resolve_program(program)
    argv = [program, *args]
    chain: list[dict] = []
    depth = env_execs = 0
    while True:
        head = _head(path, path)
        if head[:4] == ELF_MAGIC:
            binary = _elf(path, path)
            script = {"path": chain[0]["file"], "chain": chain} if chain else None
            return Launch(binary, tuple(argv), script)
        if head[:2] != b"#!":
            raise CannoliError(f"{path}: not an ELF executable or a #! script" +
                               (f" (it is the interpreter of {chain[-1]['file']})" if chain else
                                "; cannoli records Linux ELF programs and the scripts they run"))
        if not os.access(path, os.X_OK):
            raise CannoliError(f"{path}: a script without execute permission, which Linux would not run; "
                               f"chmod +x {path}")
        if depth == MAX_SCRIPT_DEPTH:
            raise CannoliError(f"{chain[0]['file']}: more than {MAX_SCRIPT_DEPTH} nested #! interpreters "
                               f"(Linux stops there: too many levels)")
        try:
            line = parse_shebang(head)
        except ValueError as exc:
            raise CannoliError(f"{path}: {exc}, so Linux would not run it") from None
        _check_interpreter_path(path, line.interpreter)
        # the kernel: argv[0] becomes the interpreter, then its argument, then the script's path
        argv = [line.interpreter, *([line.arg] if line.arg is not None else []), path, *argv[1:]]
        step = {"file": path, "interpreter": line.interpreter, "arg": line.arg, "runs": line.interpreter}
        chain.append(step)
        path, depth = line.interpreter, depth + 1
        if _is_env(line.interpreter):
            env_execs += 1
            if env_execs > MAX_ENV_EXECS:
                raise CannoliError(f"{chain[0]['file']}: #!{line.interpreter} scripts run each other in a loop")
            argv, path = _env_exec(step["file"], line, argv)
            step["runs"] = path
            depth = 0  # env execvp()s the command: a new exec, so the kernel's depth starts again


def _check_interpreter_path(script: str, interp: str) -> None:
    what = f"{script}: its #! interpreter {interp!r}"
    if not os.path.isabs(interp):
        raise CannoliError(f"{what} is a relative path, which Linux would look for in the current directory; "
                           f"give its absolute path")
    paths.input_file(interp, what, hint="the line ends in a carriage return: convert the script's DOS line ends"
                     if interp.endswith("\r") else "")
    if not os.access(interp, os.X_OK):
        raise CannoliError(f"{what} is not executable")


def _is_env(interp: str) -> bool:
    """env(1) itself (an ELF named env), not a script of that name."""
    if os.path.basename(interp) != "env":
        return False
    try:
        with open(interp, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def _env_exec(script: str, line: Shebang, argv: list[str]) -> tuple[list[str], str]:
    """What env does with the argv the kernel gave it ([env, ARG, script, args...]):
    (the argv of the command it runs, the command's path on PATH)."""
    words = _env_command(script, line)
    found = shutil.which(words[0])
    if not found:
        hint = " (Linux passes the rest of a #! line as one argument; env -S splits it)" \
            if " " in words[0] or "\t" in words[0] else ""
        raise CannoliError(f"{script}: #!{line.interpreter} {line.arg}: env finds no {words[0]!r} on PATH{hint}")
    return [*words, *argv[2:]], found


_ENV_SPLIT_SPECIAL = set("'\"\\$#")


def _env_command(script: str, line: Shebang) -> list[str]:
    """The command and arguments env would run for a `#!/usr/bin/env ARG` line:
    ARG itself, or the words of `-S WORDS`.  Options, variable assignments and
    -S quoting are refused rather than half understood."""
    arg = line.arg
    what = f"{script}: #!{line.interpreter}" + (f" {arg}" if arg else "")
    if arg is None:
        raise CannoliError(f"{what} names no command for env to run")
    words = [arg]
    if arg.startswith("-S"):
        if _ENV_SPLIT_SPECIAL & set(arg):
            raise CannoliError(f"{what}: env -S quoting, escapes and variables are not followed; "
                               f"record the command itself")
        words = arg[2:].split()
    if not words or words[0].startswith("-") or "=" in words[0]:
        raise CannoliError(f"{what}: env options and variable assignments are not followed; record the command "
                           f"itself, e.g. cannoli record {words[-1] if words else 'COMMAND'} {script}")
    return words
