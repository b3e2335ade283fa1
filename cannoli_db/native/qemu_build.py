"""A newer QEMU made by the project: fetch Debian 13's QEMU 10 source with a
private apt state, apply qemu_patches/*.patch, build the linux-user targets and
keep the result in the cache (`cannoli setup-qemu`; docs/qemu10.md).

    <cache>/qemu/<debian-version>-<patch-hash-12>-<targets>/
        bin/qemu-<arch>          the emulators
        include/qemu-plugin.h    the plugin API header of that source
        contrib/execlog.c        QEMU's own trace plugin, for the benchmarks' side by side
        build.json               written last: the build is complete

A build happens in a hidden temporary directory beside the others and is
renamed into place, so a failed or interrupted build never looks complete.
Nothing here touches the system's apt configuration or state.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

from rich.console import Console

from cannoli_db.errors import CannoliError
from cannoli_db.native import cache_dir

SUITE = "trixie"  # Debian 13: QEMU 10.0
SOURCE_PACKAGE = "qemu"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Debian's source drops QEMU's bundled meson wheel and QEMU 10 needs meson >= 1.5
# (Debian 12 has 1.0); this version built 10.0.13 here.
MESON = "meson==1.7.2"
DEFAULT_TARGETS = ("x86_64", "aarch64")
# configs/targets/*-linux-user.mak of QEMU 10.0
LINUX_USER_TARGETS = (
    "aarch64", "aarch64_be", "alpha", "arm", "armeb", "hexagon", "hppa", "i386", "loongarch64", "m68k",
    "microblaze", "microblazeel", "mips", "mips64", "mips64el", "mipsel", "mipsn32", "mipsn32el", "or1k",
    "ppc", "ppc64", "ppc64le", "riscv32", "riscv64", "s390x", "sh4", "sh4eb", "sparc", "sparc32plus",
    "sparc64", "x86_64", "xtensa", "xtensaeb",
)
# Debian release names and aliases: a suite of one of these is a Debian archive
DEBIAN_SUITES = {
    "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
    "oldoldstable", "oldstable", "stable", "testing", "unstable", "experimental",
}
# command -> the Debian package that provides it
BUILD_TOOLS = {
    "apt-get": "apt", "dpkg-source": "dpkg-dev", "patch": "patch", "cc": "gcc", "flex": "flex",
    "bison": "bison", "ninja": "ninja-build", "pkg-config": "pkg-config",
}
SETUP_HINT = "or run: bash setup.sh --qemu10"


@dataclass(frozen=True)
class QemuBuild:
    """One complete build in the cache."""

    path: Path
    debian_version: str
    qemu_version: str
    patch_hash: str
    patches: tuple[str, ...]
    targets: tuple[str, ...]
    build_seconds: float
    built_at: str

    @property
    def bin_dir(self) -> Path:
        return self.path / "bin"

    @property
    def plugin_header(self) -> Path:
        return self.path / "include" / "qemu-plugin.h"

    @property
    def stamp(self) -> Path:
        return self.path / "build.json"

    @property
    def execlog_source(self) -> Path:
        return self.path / "contrib" / "execlog.c"

    def qemu(self, arch: str) -> Path:
        return self.bin_dir / f"qemu-{arch}"


def builds_dir() -> Path:
    return cache_dir() / "qemu"


def parse_targets(text: str | Iterable[str]) -> tuple[str, ...]:
    """'x86_64,aarch64' (or names) -> sorted unique targets; unknown ones are a CannoliError."""
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in LINUX_USER_TARGETS]
    if unknown or not names:
        what = f"unknown target {', '.join(unknown)}" if unknown else "no target given"
        raise CannoliError(f"{what}: give a comma-separated list of QEMU linux-user targets, "
                           f"e.g. x86_64,aarch64 (known: {' '.join(LINUX_USER_TARGETS)})")
    # sorted, so that one set of targets has one cache key
    return tuple(sorted(set(names)))


# ---------------------------------------------------------------- patches

def patch_files() -> list[Path]:
    """qemu_patches/*.patch in name order (the order they are applied in)."""
    root = resources.files("cannoli_db.qemu_patches")
    return sorted((Path(str(p)) for p in root.iterdir() if p.name.endswith(".patch")), key=lambda p: p.name)


def patch_hash(patches: list[Path] | None = None) -> str:
    """sha256 over the patches' names and contents, in order: the build key."""
    h = hashlib.sha256()
    for path in patch_files() if patches is None else patches:
        h.update(path.name.encode() + b"\0")
        data = path.read_bytes()
        h.update(len(data).to_bytes(8, "little") + data)  # length-prefixed: no two sets hash alike
    return h.hexdigest()


def apply_patches(source: Path, patches: list[Path], log: Path | None = None) -> None:
    """Apply each patch with `patch -p1` to the tree at `source`, in order.

    Each patch is tried with --dry-run first, so one that does not apply leaves
    the tree as it was and the error names it.  No fuzz (as dpkg-source and
    `git apply`): a patch whose context moved on could otherwise land in the
    wrong place of a new QEMU without a word."""
    if patches and not shutil.which("patch"):
        raise CannoliError(f"`patch` is missing: apt-get install patch ({SETUP_HINT})")
    for path in patches:
        for extra in (["--dry-run"], []):
            cmd = ["patch", "-p1", "--forward", "--batch", "--fuzz=0", *extra, "-i", str(path)]
            proc = subprocess.run(cmd, cwd=source, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if log is not None:
                _append(log, cmd, proc.stdout + proc.stderr)
            if proc.returncode != 0:
                said = _pick_line(proc.stdout + proc.stderr)
                raise CannoliError(f"qemu_patches/{path.name} does not apply to {source.name} ({said}): "
                                   f"rebase the patch on this QEMU source or remove it")


# ---------------------------------------------------------------- apt

def debian_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The first http(s) URI in the system's apt sources that serves a Debian
    suite other than security updates, else deb.debian.org."""
    for uri, suites in _apt_sources(etc_apt):
        # file:, cdrom: and mirror+file: sources would not carry Debian 13's source
        if uri.startswith(("http://", "https://")) and "security" not in uri \
                and any(_is_debian_suite(s) for s in suites):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def _is_debian_suite(suite: str) -> bool:
    if "security" in suite or "/updates" in suite:  # security archives lag and hold few sources
        return False
    return suite.split("-")[0] in DEBIAN_SUITES


def _apt_sources(etc_apt: Path) -> Iterator[tuple[str, list[str]]]:
    """(uri, suites) of every enabled entry, in the order apt reads the files."""
    parts = etc_apt / "sources.list.d"
    files = [etc_apt / "sources.list"]
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        yield from (_deb822_entries(text) if path.suffix == ".sources" else _one_line_entries(text))


def _one_line_entries(text: str) -> Iterator[tuple[str, list[str]]]:
    for line in text.splitlines():
        m = re.match(r"\s*deb(?:-src)?\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line.split("#", 1)[0])
        if m:
            yield m[1], [m[2]]


def _deb822_entries(text: str) -> Iterator[tuple[str, list[str]]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and key:  # continuation line
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if not {"deb", "deb-src"} & set(fields.get("types", "").split()):
            continue
        for uri in fields.get("uris", "").split():
            yield uri, fields.get("suites", "").split()


class _Apt:
    """apt-get and apt-cache on a private sources list and state under `root`."""

    def __init__(self, root: Path, mirror: str):
        self.root = root
        self.log = root / "apt.log"
        (root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        (root / "sources.list").write_text(f"deb-src [signed-by={KEYRING}] {mirror} {SUITE} main\n")
        self.options = [
            "-o", f"Dir::Etc::SourceList={root / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={root / 'lists'}", "-o", f"Dir::Cache={root / 'cache'}",
        ]
        if os.geteuid() == 0:
            # root apt downloads as _apt, which cannot enter a private dir under /root
            self.options += ["-o", "APT::Sandbox::User=root"]

    def update(self) -> None:
        self.log.write_text("")
        # --error-on=any: apt-get update otherwise exits 0 when the mirror is unreachable,
        # and the failure would only show later as "no deb-src URIs"
        _run(["apt-get", *self.options, "--error-on=any", "update"], self.log,
             "apt-get update (Debian 13 sources)")

    def source_version(self) -> str:
        out = _run(["apt-cache", *self.options, "showsrc", SOURCE_PACKAGE], self.log,
                   "apt-cache showsrc qemu", capture=True)
        versions = re.findall(r"^Version: (\S+)", out, re.M)
        if not versions:
            raise CannoliError(f"the {SUITE} sources list has no `{SOURCE_PACKAGE}` source package; see {self.log}")
        return versions[0]

    def fetch(self, version: str, into: Path, log: Path) -> Path:
        """Download and unpack the source (dpkg-source applies Debian's patches)."""
        _run(["apt-get", *self.options, "source", "--only-source", f"{SOURCE_PACKAGE}={version}"],
             log, "apt-get source qemu", cwd=into)
        trees = [p for p in into.iterdir() if p.is_dir() and (p / "configure").is_file()]
        if len(trees) != 1:
            raise CannoliError(f"apt-get source qemu unpacked no QEMU source tree in {into}; see {log}")
        return trees[0]


# ---------------------------------------------------------------- cache

def find_build(targets: Iterable[str] = DEFAULT_TARGETS) -> QemuBuild | None:
    """The newest complete build, without network, for the current patches that
    has every one of `targets` (it may have more), or None."""
    wanted = set(parse_targets(targets))
    current = patch_hash()
    found = [b for b in map(_load, _build_dirs()) if b and b.patch_hash == current and wanted <= set(b.targets)]
    return max(found, key=lambda b: (_version_tuple(b.qemu_version), b.built_at), default=None)


def _build_dirs() -> list[Path]:
    root = builds_dir()
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.is_dir() else []


def _load(path: Path) -> QemuBuild | None:
    """The build in `path` if it is complete (stamp and every emulator present)."""
    try:
        meta = json.loads((path / "build.json").read_text())
        b = QemuBuild(path, meta["debian_version"], meta["qemu_version"], meta["patch_hash"],
                      tuple(meta["patches"]), tuple(meta["targets"]), float(meta["build_seconds"]),
                      meta["built_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return b if all(os.access(b.qemu(t), os.X_OK) for t in b.targets) else None


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text))


def build_key(debian_version: str, patches_hash: str, targets: tuple[str, ...]) -> str:
    return f"{re.sub(r'[^A-Za-z0-9.+~-]', '_', debian_version)}-{patches_hash[:12]}-{'+'.join(targets)}"


# ---------------------------------------------------------------- build

def debian_qemu_version(console: Console | None = None) -> str:
    """Debian 13's current qemu source version (apt-get update + showsrc; ~1 s)."""
    console = console or _console()
    root = builds_dir()
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root, console):  # a running build's apt would hold apt's own lock on the lists
        apt = _Apt(root / "apt", debian_mirror())
        with _step(console, "apt-get update", {}, say=False):
            apt.update()
        return apt.source_version()


def build(targets: Iterable[str] = DEFAULT_TARGETS, jobs: int | None = None, force: bool = False,
          console: Console | None = None) -> QemuBuild:
    """The build for Debian 13's current QEMU, the current patches and `targets`:
    from the cache if it is there, else fetched, patched and built (minutes)."""
    targets = parse_targets(targets)
    console = console or _console()
    patches = patch_files()
    root = builds_dir()
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root, console):
        apt = _Apt(root / "apt", debian_mirror())
        seconds: dict[str, float] = {}
        try:
            # a check, not a build step: on a cache hit the summary is the only line
            with _step(console, "apt-get update", seconds, say=False):
                apt.update()
            version = apt.source_version()
        except CannoliError as exc:
            # offline: a build for these patches is still the right answer, said loudly
            if force or not (cached := find_build(targets)):
                raise
            console.print(f"setup-qemu: cannot check Debian's version: {exc}\n"
                          f"setup-qemu: using the cached build {cached.path.name}", highlight=False)
            return cached
        final = root / build_key(version, patch_hash(patches), targets)
        if not force and (done := _load(final)):
            return done
        _check_tools()
        _remove_leftovers(root)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            out = _build_in(work, apt, version, patches, targets, jobs or os.cpu_count() or 1, console, seconds,
                            final)
            _publish(out, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return _load(final)


def _build_in(work: Path, apt: _Apt, version: str, patches: list[Path], targets: tuple[str, ...],
              jobs: int, console: Console, seconds: dict[str, float], final: Path) -> Path:
    """Fetch, patch, configure and compile in `work`; returns the stamped output dir."""
    log = builds_dir() / "last-build.log"
    log.write_text(f"cannoli setup-qemu: qemu {version}, targets {','.join(targets)}, "
                   f"patches {[p.name for p in patches]}\n")
    started = time.monotonic()
    (work / "src").mkdir()
    with _step(console, "fetch", seconds, f"qemu {version} source"):
        source = apt.fetch(version, work / "src", log)
    with _step(console, "patch", seconds, f"{len(patches)} from qemu_patches/"):
        apply_patches(source, patches, log)
    with _step(console, "meson", seconds, f"a venv with {MESON}"):
        python = _meson_python(work / "mvenv", log)
    out = work / "out"
    with _step(console, "configure", seconds):
        _configure(source, work / "build", python, targets, final, log)
    with _step(console, "compile", seconds, f"{', '.join(targets)}, {jobs} jobs, a few minutes"):
        _run(["ninja", "-j", str(jobs), *(f"qemu-{t}" for t in targets)], log, "ninja (compiling QEMU)",
             cwd=work / "build")
    _collect(source, work / "build", out, targets)
    _stamp(out, version, patches, targets, round(time.monotonic() - started, 1), seconds)
    return out


def _meson_python(venv: Path, log: Path) -> Path:
    """A private venv with a meson new enough for QEMU 10 (from PyPI)."""
    _run([sys.executable, "-m", "venv", str(venv)], log, "python3 -m venv (for meson)")
    python = venv / "bin" / "python3"
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", MESON], log,
         f"pip install {MESON}")
    return python


def _configure(source: Path, build_dir: Path, python: Path, targets: tuple[str, ...], prefix: Path,
               log: Path) -> None:
    build_dir.mkdir()
    _run([str(source / "configure"), f"--python={python}",
          f"--target-list={','.join(f'{t}-linux-user' for t in targets)}", "--enable-plugins",
          "--disable-system", "--disable-tools", "--disable-docs",
          # firmware blobs are for system emulation and Debian's source has none
          "--disable-install-blobs",
          # nothing is installed (the emulators are copied); the prefix names where they end up
          f"--prefix={prefix}"],
         log, "QEMU configure", cwd=build_dir)


def _collect(source: Path, build_dir: Path, out: Path, targets: tuple[str, ...]) -> None:
    (out / "bin").mkdir(parents=True)
    (out / "include").mkdir()
    for t in targets:
        shutil.copy2(build_dir / f"qemu-{t}", out / "bin" / f"qemu-{t}")
    shutil.copy2(source / "include" / "qemu" / "qemu-plugin.h", out / "include" / "qemu-plugin.h")
    (out / "contrib").mkdir()
    shutil.copy2(source / "contrib" / "plugins" / "execlog.c", out / "contrib" / "execlog.c")


def _stamp(out: Path, version: str, patches: list[Path], targets: tuple[str, ...], total: float,
           seconds: dict[str, float]) -> None:
    """build.json, written last (to a temporary name, then renamed): the completeness stamp."""
    first = subprocess.run([str(out / "bin" / f"qemu-{targets[0]}"), "--version"], capture_output=True, text=True)
    m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", first.stdout)
    if first.returncode != 0 or not m:
        raise CannoliError(f"the built qemu-{targets[0]} does not run (`--version` said "
                           f"{_pick_line(first.stdout + first.stderr)!r}); see {builds_dir() / 'last-build.log'}")
    meta = {
        "debian_version": version, "qemu_version": m[1], "patch_hash": patch_hash(patches),
        "patches": [p.name for p in patches], "targets": list(targets), "build_seconds": total,
        "step_seconds": seconds, "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mirror": debian_mirror(), "suite": SUITE, "meson": MESON,
    }
    tmp = out / "build.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / "build.json")


def _publish(out: Path, final: Path) -> None:
    """Rename the finished build into place; a --force rebuild moves the old one aside first
    (a directory cannot be replaced by rename while it has files)."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.rename(final, old)
    os.rename(out, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    """Temporary dirs of builds that were killed (we hold the lock: none is running)."""
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith((".build-", ".old-")):
            shutil.rmtree(p, ignore_errors=True)


def summary(b: QemuBuild) -> str:
    return (f"cannoli: QEMU {b.qemu_version} (Debian {b.debian_version}) for {', '.join(b.targets)} "
            f"with {len(b.patches)} patch(es) from qemu_patches/ in {b.bin_dir} "
            f"(built in {b.build_seconds:.0f} s on {b.built_at})")


# ---------------------------------------------------------------- helpers

def _console() -> Console:
    # soft_wrap: an error line or a path is never cut in two, on a terminal or in a CI log
    return Console(stderr=True, soft_wrap=True)


def _check_tools() -> None:
    """Every program the build runs, before starting: one line naming the packages."""
    missing = [pkg for cmd, pkg in BUILD_TOOLS.items() if not shutil.which(cmd)]
    if shutil.which("pkg-config") and subprocess.run(["pkg-config", "--exists", "glib-2.0"]).returncode != 0:
        missing.append("libglib2.0-dev")
    if subprocess.run([sys.executable, "-c", "import ensurepip, venv"], capture_output=True).returncode != 0:
        missing.append("python3-venv")
    if not KEYRING.is_file():
        missing.append("debian-archive-keyring")
    if missing:
        raise CannoliError(f"building QEMU 10 needs: apt-get install {' '.join(missing)} ({SETUP_HINT})")


@contextmanager
def _lock(root: Path, console: Console) -> Iterator[None]:
    """One build at a time per cache: a second `setup-qemu` waits, then finds the build done."""
    with open(root / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            console.print(f"setup-qemu: waiting for another build in {root}")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


@contextmanager
def _step(console: Console, name: str, seconds: dict[str, float], detail: str = "",
          say: bool = True) -> Iterator[None]:
    """A spinner while the step runs, then (if `say`) one line with its time (kept in build.json by `name`)."""
    label = f"{name} ({detail})" if detail else name
    started = time.monotonic()
    with console.status(f"setup-qemu: {label}"):
        yield
    seconds[name] = round(time.monotonic() - started, 1)
    if say:
        console.print(f"setup-qemu: {label}: {seconds[name]:.1f} s", highlight=False)


def _run(cmd: list, log: Path, what: str, cwd: Path | None = None, capture: bool = False) -> str:
    """Run `cmd` with its output appended to `log` (stdout returned instead when
    `capture`); failure is a one-line CannoliError that names the log."""
    cmd = [str(c) for c in cmd]
    with open(log, "a") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        start = f.tell()  # this command's output starts here: the error line is picked from it
        try:
            proc = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stderr=f, text=True,
                                  stdout=subprocess.PIPE if capture else f)
        except OSError as exc:
            raise CannoliError(f"{what}: cannot run {cmd[0]} ({exc.strerror}); see {log}") from None
    if proc.returncode != 0:
        with open(log, errors="replace") as f:
            f.seek(start)
            said = _pick_line(f.read())
        raise CannoliError(f"{what} failed (exit {proc.returncode}): {said}; full log: {log}")
    return proc.stdout or ""


def _append(log: Path, cmd: list[str], output: str) -> None:
    with open(log, "a") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n{output}")


def _pick_line(text: str) -> str:
    """The most telling line of a tool's output: the first error, else the last line
    that mentions a failure, else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # a compiler's or configure's first "error:" is the cause; later ones are consequences
    errors = [ln for ln in lines if (re.search(r"\berror\b", ln, re.I) and "-Werror" not in ln)
              or ln.startswith("E: ")]  # apt's errors
    if errors:
        return errors[0][:200]
    telling = [ln for ln in lines if re.search(r"fail|not found|unable|cannot|can't|reversed|no such", ln, re.I)]
    return ((telling or lines or ["no output"])[-1])[:200]
