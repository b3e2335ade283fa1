"""The C side, built on first use: finding QEMU, and compiling the plugin and
the ring-consumer library into a cache keyed by source hash and QEMU version.

QEMU plugin API versions (see qemu_patches/plugin/qemu_plugin_api.h):
7.2-8.2 -> 1, 9.0 -> 2, 9.1 -> 3, 9.2/10.0 -> 4, 10.1+ -> 5.  The plugin is
built for min(API, 4): a QEMU loads any plugin between its minimum and current
API version, and version 5 added nothing the plugin uses.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .. import arch as guest_arch
from ..errors import CannoliError

SUPPORTED_PLUGIN_APIS = (1, 2, 3, 4, 5)
NEWEST_PLUGIN_API_BUILT = 4


# What qemu_patches/0002 adds to `--version`: this QEMU computes x86 eflags for plugins.
X86_FLAGS_MARKER = "Cannoli DB: x86 eflags computed for plugins"
# What qemu_patches/0003 adds: this QEMU has -follow-exec (exec'd programs run under it).
FOLLOW_EXEC_MARKER = "Cannoli DB: -follow-exec runs exec'd programs under this QEMU"
# What qemu_patches/0004 adds: its generated code writes the plugin's records
# (plugin_inline.c), no callback per block or access.
INLINE_RECORD_MARKER = "Cannoli DB: plugins record from generated code"


@dataclass(frozen=True)
class Qemu:
    path: str
    version: tuple[int, int, int]
    version_text: str
    computes_x86_flags: bool = False
    follows_exec: bool = False
    records_inline: bool = False

    @property
    def plugin_api(self) -> int:
        return plugin_api_for(self.version)

    @property
    def has_registers(self) -> bool:
        return self.plugin_api >= 2


def plugin_api_for(version: tuple[int, int, int]) -> int:
    major_minor = version[:2]
    if major_minor < (7, 2):
        return 0
    if major_minor < (9, 0):
        return 1
    if major_minor < (9, 1):
        return 2
    if major_minor < (9, 2):
        return 3
    if major_minor < (10, 1):
        return 4
    return 5


def cache_dir() -> Path:
    base = os.environ.get("CANNOLI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cannoli-db"
    )
    return Path(base)


def find_qemu(arch: str, explicit: str | None = None) -> Qemu:
    """The QEMU user-mode emulator for `arch`, or a CannoliError saying how to get one."""
    name = guest_arch.get(arch).qemu_binary
    if explicit and os.path.isdir(explicit):
        explicit = os.path.join(explicit, name)  # a directory of qemu-<arch> binaries
    path = explicit or shutil.which(name)
    if explicit and not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
        raise CannoliError(f"--qemu {explicit}: not an executable file; give the path of a {name} binary "
                           f"or of a directory that holds one")
    if not path:
        raise CannoliError(
            f"{name} not found: install QEMU user-mode emulation (Debian/Ubuntu: apt-get install qemu-user) "
            f"or pass --qemu PATH"
        )
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        raise CannoliError(f"cannot run {path}: {exc.strerror}") from None
    match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", out.stdout)
    if not match:
        raise CannoliError(f"{path} does not look like QEMU (no version in `{path} --version`)")
    version = (int(match[1]), int(match[2]), int(match[3] or 0))
    qemu = Qemu(path, version, out.stdout.splitlines()[0].strip(), X86_FLAGS_MARKER in out.stdout,
                FOLLOW_EXEC_MARKER in out.stdout, INLINE_RECORD_MARKER in out.stdout)
    if qemu.plugin_api not in SUPPORTED_PLUGIN_APIS:
        raise CannoliError(
            f"{path} is QEMU {'.'.join(map(str, version))}, older than 7.2 (no TCG plugin API this "
            f"Cannoli DB supports): install Debian 12's qemu-user, or build QEMU 10 with `cannoli setup-qemu`"
        )
    return qemu


def _sources() -> list[Path]:
    root = resources.files("cannoli_db.qemu_patches")
    found = [Path(str(p)) for p in root.iterdir() if str(p).endswith((".c", ".h"))]
    found += [Path(str(p)) for p in root.joinpath("plugin").iterdir() if str(p).endswith((".c", ".h"))]
    return sorted(found)


def _compiler() -> str:
    wanted = os.environ.get("CC")
    cc = shutil.which(wanted) if wanted else (shutil.which("cc") or shutil.which("gcc"))
    if not cc:
        where = f"CC={wanted} is not an executable" if wanted else "no C compiler (cc or gcc) on PATH"
        raise CannoliError(
            f"{where}; a C compiler builds the QEMU plugin once: apt-get install gcc, or set CC"
        )
    return cc


def _source_hash(extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for path in _sources():
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _build(target: Path, command: list[str]) -> Path:
    """Run `command` (which writes its output to the last argument's temp path) and
    move the result to `target` atomically, so concurrent builds are safe."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        try:
            proc = subprocess.run(command + ["-o", tmp], capture_output=True, text=True)
        except OSError as exc:
            raise CannoliError(f"cannot run the C compiler {command[0]}: {exc.strerror}") from None
        if proc.returncode != 0:
            if "capstone" in proc.stderr:
                raise CannoliError("the plugin needs capstone's C library to build: apt-get install libcapstone-dev "
                                   "(or run the README's setup command)")
            first = (proc.stderr.strip().splitlines() or ["(no output)"])[0]
            raise CannoliError(f"building {target.name} failed: {first}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def plugin_path(qemu: Qemu) -> Path:
    """Build (once) and return the plugin for this QEMU's plugin API."""
    api = min(qemu.plugin_api, NEWEST_PLUGIN_API_BUILT)
    key = _source_hash(f"plugin api={api}")
    src = Path(str(resources.files("cannoli_db.qemu_patches").joinpath("plugin")))
    sources = sorted(str(p) for p in src.glob("plugin_*.c")) + [str(src.parent / "fault_point.c")]
    cmd = [_compiler(), "-O2", "-g", "-std=gnu11", "-shared", "-fPIC", "-fvisibility=hidden",
           "-Wall", f"-DCN_QEMU_PLUGIN_API={api}", *sources, "-lcapstone", "-lpthread"]
    return _build(cache_dir() / f"libcannoli-{key}.so", cmd)


def consumer_path() -> Path:
    """Build (once) and return the ring-consumer library (the ring, the record codec, the
    fault point) that the recorder and the readers load with cffi."""
    key = _source_hash("consumer")
    src = Path(str(resources.files("cannoli_db.qemu_patches").joinpath("ring_consumer.c")))
    cmd = [_compiler(), "-O2", "-std=gnu11", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", str(src),
           str(src.parent / "fault_point.c"), str(src.parent / "record_codec.c"), "-lcapstone"]
    return _build(cache_dir() / f"libcannoli-ring-{key}.so", cmd)


def call_stack_path() -> Path:
    """Build (once) and return the call/return walker (qemu_patches/call_stack.c) that calls.py loads with cffi."""
    key = _source_hash("call_stack")
    src = Path(str(resources.files("cannoli_db.qemu_patches").joinpath("call_stack.c")))
    cmd = [_compiler(), "-O2", "-std=gnu11", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", str(src)]
    return _build(cache_dir() / f"libcannoli-calls-{key}.so", cmd)
