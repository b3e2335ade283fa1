"""The QEMU 10 that `cannoli setup-qemu` builds (cannoli_db/native/qemu_build.py).

No test builds QEMU (minutes): they use the build in the cache, and fail --
not skip -- when there is none, saying to run `cannoli setup-qemu`.  The
helpers (patching, mirror, targets) are tested on small trees and files.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from cannoli_db.errors import CannoliError
from cannoli_db.native import qemu_build as qb

from .conftest import GUEST_ENV, run_cannoli

MARKER = "Patched by Cannoli DB (qemu_patches/)"


@pytest.fixture(scope="module")
def qemu10() -> qb.QemuBuild:
    found = qb.find_build(qb.DEFAULT_TARGETS)
    if found is None:
        pytest.fail(f"no QEMU 10 build for the current qemu_patches/ in {qb.builds_dir()}: "
                    f"run `.venv/bin/cannoli setup-qemu` (or bash setup.sh --qemu10)")
    return found


# ---------------------------------------------------------------- the cached build

@pytest.mark.parametrize("arch", qb.DEFAULT_TARGETS)
def test_version_is_10_and_names_the_patches(qemu10, arch):
    out = subprocess.run([qemu10.qemu(arch), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    # the regex native.find_qemu reads the version with, on the first line
    version = re.search(r"version (\d+)\.(\d+)", first)
    assert first.startswith(f"qemu-{arch} version ") and version and version[1] == "10", out.stdout
    assert MARKER in out.stdout.splitlines(), out.stdout  # qemu_patches/0001 was applied


def test_built_qemu_runs_programs(qemu10, guest, cross_guest):
    # tests/guests/history.c stores known bytes into one global and prints it
    for arch, program in (("x86_64", guest("history")), ("aarch64", cross_guest("aarch64", "history"))):
        proc = subprocess.run([qemu10.qemu(arch), program, "2"], env=GUEST_ENV, capture_output=True,
                              text=True, timeout=120)
        assert (proc.returncode, proc.stdout) == (0, "cell=11111111bbcc11aa\n"), (arch, proc.stderr)


def test_stamp_records_the_current_patches(qemu10):
    meta = json.loads(qemu10.stamp.read_text())
    patches = qb.patch_files()
    assert meta["patch_hash"] == qb.patch_hash(patches)
    assert meta["patches"] == [p.name for p in patches]
    assert "0001-version-names-cannoli-patches.patch" in meta["patches"]
    assert qemu10.path.name == qb.build_key(meta["debian_version"], meta["patch_hash"], tuple(meta["targets"]))
    assert meta["qemu_version"].startswith("10.")
    # the plugin API header of the same source is kept beside the emulators
    assert "qemu_plugin_install" in qemu10.plugin_header.read_text()


def test_build_again_returns_the_cache(qemu10):
    debian = qb.debian_qemu_version()
    if debian != qemu10.debian_version:
        # build() would rebuild now, which takes minutes: never in a test
        pytest.fail(f"Debian 13 now has qemu {debian}, the cache {qemu10.debian_version}: run `cannoli setup-qemu`")
    stamp_before = qemu10.stamp.stat().st_mtime_ns
    started = time.monotonic()
    again = qb.build(qemu10.targets, jobs=1)
    assert time.monotonic() - started < 60
    assert again == qemu10
    assert qemu10.stamp.stat().st_mtime_ns == stamp_before
    assert not list(qb.builds_dir().glob(".build-*")), "a cache hit made a build directory"


def test_find_build_accepts_a_subset_of_targets(qemu10):
    assert qb.find_build(["x86_64"]) is not None
    assert qb.find_build(["x86_64"]).patch_hash == qemu10.patch_hash


# ---------------------------------------------------------------- patches

GOOD = """\
--- a/linux-user/main.c
+++ b/linux-user/main.c
@@ -1,3 +1,4 @@
 one
 two
+two and a half
 three
"""

# one context line differs: patch's default fuzz would apply it anyway, --fuzz=0 must not
BAD = GOOD.replace(" two\n", " TWO\n")


@pytest.fixture
def tree(tmp_path) -> Path:
    src = tmp_path / "qemu-src"
    (src / "linux-user").mkdir(parents=True)
    (src / "linux-user" / "main.c").write_text("one\ntwo\nthree\n")
    return src


def _patch(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / "p").mkdir(exist_ok=True)
    path = tmp_path / "p" / name
    path.write_text(text)
    return path


def test_apply_patches_applies_in_order(tree, tmp_path):
    log = tmp_path / "build.log"
    second = GOOD.replace("@@ -1,3 +1,4 @@\n one\n two\n+two and a half\n three\n",
                          "@@ -2,3 +2,4 @@\n two\n two and a half\n three\n+four\n")
    qb.apply_patches(tree, [_patch(tmp_path, "0001-a.patch", GOOD), _patch(tmp_path, "0002-b.patch", second)], log)
    assert (tree / "linux-user" / "main.c").read_text() == "one\ntwo\ntwo and a half\nthree\nfour\n"
    assert "0002-b.patch" in log.read_text()


def test_a_patch_that_does_not_apply_is_one_line_naming_it(tree, tmp_path):
    good, bad = _patch(tmp_path, "0001-good.patch", GOOD), _patch(tmp_path, "0002-stale.patch", BAD)
    with pytest.raises(CannoliError) as err:
        qb.apply_patches(tree, [good, bad])
    message = str(err.value)
    assert "\n" not in message
    assert "qemu_patches/0002-stale.patch does not apply to qemu-src" in message and "rebase" in message
    # the dry run kept the failing patch out: only the good one changed the tree
    assert (tree / "linux-user" / "main.c").read_text() == "one\ntwo\ntwo and a half\nthree\n"
    assert not list(tree.rglob("*.rej"))


def test_an_applied_patch_is_not_applied_twice(tree, tmp_path):
    good = _patch(tmp_path, "0001-good.patch", GOOD)
    qb.apply_patches(tree, [good])
    with pytest.raises(CannoliError, match="0001-good.patch does not apply"):
        qb.apply_patches(tree, [good])


def test_patch_hash_covers_names_contents_and_order(tmp_path):
    a, b = _patch(tmp_path, "0001-a.patch", GOOD), _patch(tmp_path, "0002-b.patch", BAD)
    base = qb.patch_hash([a, b])
    assert qb.patch_hash([a, b]) == base and len(base) == 64
    assert qb.patch_hash([b, a]) != base
    assert qb.patch_hash([a]) != base
    b.write_text(BAD + " ")
    assert qb.patch_hash([a, b]) != base


def test_repository_patches_are_packaged_in_name_order():
    names = [p.name for p in qb.patch_files()]
    assert names == sorted(names) and "0001-version-names-cannoli-patches.patch" in names
    assert all(name.endswith(".patch") for name in names)


# ---------------------------------------------------------------- mirror, targets

def test_mirror_from_deb822_skips_security_and_other_archives(tmp_path):
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "a-security.sources").write_text(
        "Types: deb\nURIs: http://security.debian.org/debian-security\nSuites: bookworm-security\n"
        "Components: main\n")
    (parts / "b-node.sources").write_text(
        "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n")
    (parts / "c-debian.sources").write_text(
        "# a comment\nTypes: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb deb-src\n"
        "# snapshot: http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "URIs: https://mirror.example.org/debian/\n  http://second.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    (parts / "d-other.sources.disabled").write_text("Types: deb\nURIs: http://wrong.example/debian\nSuites: sid\n")
    assert qb.debian_mirror(tmp_path) == "https://mirror.example.org/debian"


def test_mirror_from_legacy_sources_list(tmp_path):
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb http://security.debian.org/debian-security bookworm-security main\n"
        "deb cdrom:[Debian GNU/Linux 12]/ bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://ftp.de.debian.org/debian/ bookworm main\n"
        "deb http://later.example/debian bookworm main\n")
    assert qb.debian_mirror(tmp_path) == "http://ftp.de.debian.org/debian"


def test_mirror_defaults_to_deb_debian_org(tmp_path):
    assert qb.debian_mirror(tmp_path) == "http://deb.debian.org/debian"
    (tmp_path / "sources.list").write_text("deb http://archive.ubuntu.com/ubuntu jammy main\n")
    assert qb.debian_mirror(tmp_path) == "http://deb.debian.org/debian"


def test_targets_are_validated_sorted_and_unique():
    assert qb.parse_targets("x86_64, aarch64,x86_64") == ("aarch64", "x86_64")
    for bad in ("nosuch", "", "x86_64,arm64"):
        with pytest.raises(CannoliError, match="linux-user targets"):
            qb.parse_targets(bad)


def test_cli_rejects_an_unknown_target_in_one_line():
    proc = run_cannoli("setup-qemu", "--targets", "nosuch", timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "unknown target nosuch" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
