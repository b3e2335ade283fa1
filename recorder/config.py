"""The user's settings file: which QEMU records, and whether registers are recorded.

    # ~/.config/cannoli-db/config.toml   (or $CANNOLI_CONFIG)
    qemu = "built"            # the QEMU 10 that `cannoli setup-qemu` built (the default when built)
    # qemu = "system"         # the qemu-<arch> on PATH
    # qemu = "/opt/qemu/bin"  # a directory of qemu-<arch> binaries, or one binary
    regs = true               # record registers where the QEMU can (default)

Command-line options win over the file; the file wins over the default (the
`cannoli setup-qemu` build where there is one, else PATH).  An unknown
key or a wrong type is an error, so a typo never silently does nothing; so is
a $CANNOLI_CONFIG that names no readable file (a missing default file is no
settings).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cannoli_db import arch as guest_arch
from cannoli_db import paths
from cannoli_db.errors import CannoliError

BUILT = "built"  # qemu = "built": the newest `cannoli setup-qemu` build
SYSTEM = "system"  # qemu = "system": the qemu-<arch> on PATH
KNOWN = {"qemu": str, "regs": bool}


@dataclass(frozen=True)
class Settings:
    qemu: str | None = None
    regs: bool | None = None
    source: Path | None = None


def config_path() -> Path:
    explicit = os.environ.get("CANNOLI_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "cannoli-db" / "config.toml"


def load(path: Path | None = None) -> Settings:
    """The settings of `path`, else of $CANNOLI_CONFIG (which must exist), else of
    the default file if there is one."""
    from_env = path is None and bool(os.environ.get("CANNOLI_CONFIG"))
    explicit = path is not None or from_env
    path = path or config_path()
    if not explicit and not os.path.lexists(path):
        return Settings()
    paths.input_file(path, f"$CANNOLI_CONFIG {path}" if from_env else str(path), kind="settings file",
                     hint="unset CANNOLI_CONFIG or point it to a settings file" if from_env else "")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CannoliError(f"cannot read the settings file {path}: {exc}") from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CannoliError(f"{path}: not valid TOML ({exc}); fix or remove it") from None
    for key, value in values.items():
        if key not in KNOWN:
            raise CannoliError(f"{path}: unknown setting {key!r} (known: {', '.join(KNOWN)})")
        if not isinstance(value, KNOWN[key]):
            raise CannoliError(f"{path}: {key} must be a {KNOWN[key].__name__}, not {value!r}")
    return Settings(values.get("qemu"), values.get("regs"), path)


@dataclass(frozen=True)
class QemuChoice:
    path: str | None  # None: the qemu-<arch> on PATH
    why: str  # for meta.json, `cannoli info` and the summary line


def choose_qemu(given: str | None, settings: Settings, arch: str) -> QemuChoice:
    """The QEMU a recording runs, and why: --qemu, else the settings file, else
    the fastest there is (the `cannoli setup-qemu` build when there is one for
    this architecture: its generated code writes the records), else PATH's."""
    target = guest_arch.get(arch).qemu_target
    if given is not None:
        return QemuChoice(_resolve(given, target), f"--qemu {given}")
    if settings.qemu is not None:
        return QemuChoice(_resolve(settings.qemu, target), f"qemu = \"{settings.qemu}\" in {settings.source}")
    build = _newest_build(target)
    if build is not None:
        return QemuChoice(build, "the default: the QEMU `cannoli setup-qemu` built (--qemu system for PATH's)")
    return QemuChoice(None, f"the default: PATH's, as `cannoli setup-qemu` has built no qemu-{target}")


def _resolve(choice: str, target: str) -> str | None:
    """"built" is the newest `cannoli setup-qemu` build, "system" PATH's, else a path."""
    if choice == SYSTEM:
        return None
    if choice != BUILT:
        return choice
    build = _newest_build(target)
    if build is None:
        raise CannoliError(f"qemu = \"built\", but `cannoli setup-qemu` has built no qemu-{target} yet: "
                           f"run `cannoli setup-qemu --targets {target}`")
    return build


def _newest_build(target: str) -> str | None:
    from cannoli_db.native import qemu_build

    build = qemu_build.find_build((target,))
    return str(build.qemu(target)) if build is not None else None
