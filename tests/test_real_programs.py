"""A real distribution binary, recorded whole: Debian's xz compressing text.
The independent truth is what xz really printed: at each write(1, buf, n) the
memory the trace shows at [buf, buf + n) must be exactly the next n bytes of
xz's output, reconstructed from the recorded accesses alone (the store's
address index finds them)."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys

import pytest

from cannoli_db import Trace

from .conftest import GUEST_ENV

XZ = shutil.which("xz") or "/usr/bin/xz"


def text(size: int) -> bytes:
    rng = random.Random(14)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(700)]
    out = []
    while sum(map(len, out)) < size:
        out.append((" ".join(rng.choices(words, k=11)) + ".\n").encode())
    return b"".join(out)[:size]


@pytest.fixture(scope="module")
def xz_trace(tmp_path_factory):
    work = tmp_path_factory.mktemp("xz")
    source = work / "input.txt"
    source.write_bytes(text(96_000))
    native = subprocess.run([XZ, "-k", "-c", str(source)], capture_output=True, check=True).stdout
    trace = work / "xz.cannoli"
    # the output is binary: run the CLI as run_cannoli does, but keep bytes
    proc = subprocess.run([sys.executable, "-m", "cannoli_db.cli", "record", "-o", str(trace), XZ, "-k", "-c",
                           str(source)], env=GUEST_ENV, capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stderr.decode()
    return trace, native, proc.stdout


def test_xz_output_passes_through_unchanged(xz_trace):
    _, native, recorded = xz_trace
    assert recorded == native and native.startswith(b"\xfd7zXZ")


def test_memory_at_every_write_is_what_xz_printed(xz_trace):
    trace, native, _ = xz_trace
    with Trace.open(trace) as t:
        writes = t.sql("SELECT idx, arg1, arg2, ret FROM syscalls WHERE name = 'write' AND arg0 = 1 "
                       "ORDER BY idx").rows
        assert writes, "xz made no write(1, ...)"
        printed = 0
        for idx, buf, count, ret in writes:
            assert ret == count, "a short write: the comparison below would not hold"
            shown = bytes(t.memory_at(idx, buf, count))  # raises if any byte is unknown
            assert shown == native[printed: printed + count], f"write at position {idx}"
            printed += count
    assert printed == len(native)
