"""setup.sh and the packaging, on a fresh clone of this repository: the README's
set-up command prints a few lines and no warning, installs a working `cannoli`
and records the example; the wheel ships every query and C source.

The clone is of the committed tree (HEAD).  The QEMU 10 build must already be
in the cache for those patches: these tests never build QEMU.  A new venv and
its pip install take ~30 s; pip's own cache makes it no download.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from cannoli_db.errors import CannoliError
from cannoli_db.native import qemu_build

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 15


def _git(*args, cwd=ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def _clone(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("setup") / "cannoli-db"
    _git("clone", "-q", str(ROOT), str(dest))
    return dest


def _setup_env() -> dict:
    # as a person runs it: their PATH and caches, not this test run's venv
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


def _require_cached_qemu10(clone: Path) -> Path:
    """The cache directory setup-qemu will use for the clone's patches; fails if it is not built."""
    patches = sorted(clone.glob("qemu_patches/*.patch"), key=lambda p: p.name)
    try:
        version = qemu_build.debian_qemu_version()
    except CannoliError:
        version = None  # offline: setup-qemu falls back to the newest cached build for these patches
    digest = qemu_build.patch_hash(patches)
    if version is not None:
        targets = qemu_build.parse_targets(qemu_build.DEFAULT_TARGETS)
        path = qemu_build.builds_dir() / qemu_build.build_key(version, digest, targets)
        if (path / "build.json").is_file():
            return path
    else:
        build = qemu_build.find_build()
        if build and build.patch_hash == digest:
            return build.path
    pytest.fail(f"QEMU 10 for the committed qemu_patches/ (Debian {version}) is not in the cache: "
                f"run `cannoli setup-qemu` first; this test does not build QEMU")


@pytest.fixture(scope="module")
def set_up(tmp_path_factory):
    """(clone, output of `bash setup.sh --qemu10`, stdout and stderr in order)."""
    clone = _clone(tmp_path_factory)
    cached = _require_cached_qemu10(clone)
    builds_before = sorted(p.name for p in qemu_build.builds_dir().iterdir())
    proc = subprocess.run(["bash", "setup.sh", "--qemu10"], cwd=clone, env=_setup_env(), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout
    assert sorted(p.name for p in qemu_build.builds_dir().iterdir()) == builds_before, "QEMU was built again"
    assert str(cached) in proc.stdout, proc.stdout
    return clone, proc.stdout


def test_setup_prints_a_few_lines_and_no_warning(set_up):
    clone, out = set_up
    lines = out.splitlines()
    assert 0 < len(lines) <= MAX_LINES, out
    assert "warning" not in out.lower() and "Traceback" not in out, out
    assert lines[-1].startswith("setup: done"), out


def test_setup_installs_cannoli_and_records_the_example(set_up):
    clone, out = set_up
    # independent truth: the example run natively prints what the recorded run printed
    native = subprocess.run([str(clone / "build" / "hello")], capture_output=True, text=True, check=True)
    assert (clone / "build" / "hello.out").read_text() == native.stdout
    assert native.stdout.startswith("hello, world (checksum ")
    info = subprocess.run([str(clone / ".venv/bin/cannoli"), "info", "build/hello.cannoli", "--format", "json"],
                          cwd=clone, capture_output=True, text=True)
    assert info.returncode == 0, info.stderr


def test_a_failing_pip_step_shows_its_output(tmp_path_factory):
    clone = _clone(tmp_path_factory)
    pyproject = clone / "pyproject.toml"
    broken = pyproject.read_text().replace('name = "cannoli-db"', 'name = "cannoli-db')
    pyproject.write_text(broken)
    with pytest.raises(tomllib.TOMLDecodeError) as parse_error:
        tomllib.loads(broken)
    proc = subprocess.run(["bash", "setup.sh"], cwd=clone, env=_setup_env(), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode != 0
    assert "setup: pip install failed" in proc.stdout, proc.stdout
    # the build backend's own words about the broken file, which a quiet success would not show
    assert str(parse_error.value) in proc.stdout.split("setup: pip install failed", 1)[1], proc.stdout


def test_every_query_and_patch_folder_is_a_listed_package():
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for top, name in (("queries", "cannoli_db.queries"), ("qemu_patches", "cannoli_db.qemu_patches")):
        folders = {p for p in (ROOT / top).rglob("*") if p.is_dir() and p.name != "__pycache__"}
        for folder in folders:
            assert ".".join([name, *folder.relative_to(ROOT / top).parts]) in packages, folder


def test_wheel_ships_every_query_and_c_source_without_warnings(set_up, tmp_path):
    clone, _ = set_up
    proc = subprocess.run([str(clone / ".venv/bin/python"), "-m", "pip", "wheel", "-v", "--no-deps",
                           "--disable-pip-version-check", "-w", str(tmp_path), str(clone)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    # setuptools' own words (BuildBackendWarning, SetuptoolsDeprecationWarning, ...)
    assert "Warning" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("cannoli_db-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = _git("ls-files", "queries", "qemu_patches", cwd=clone).split()
    assert tracked
    for path in tracked:
        installed = "cannoli_db/" + path
        assert installed in names, installed
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata
