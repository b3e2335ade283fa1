"""The chunk decoder on hostile input: a damaged, truncated or forged chunk is
rejected with ChunkError naming the chunk, or decodes to well-formed arrays --
never another exception, a hang, or an allocation beyond the format's limits."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cannoli_db import format as F
from cannoli_db.chunkfile import chunk_header
from cannoli_db.decode import ChunkError, chunk_files, decode_chunk_bytes, read_chunk

from .conftest import QEMU_LABELS, qemu_under_test, run_cannoli


@pytest.fixture(scope="module", params=QEMU_LABELS)
def real_chunk(guest, tmp_path_factory, request) -> bytes:
    """A chunk from each QEMU: QEMU 10's carries register records."""
    trace = tmp_path_factory.mktemp("decode") / "t.cannoli"
    proc = run_cannoli("record", "--no-index", "-o", trace, *qemu_under_test(request.param).record_options,
                       guest("threads"), "2", "2000")
    assert proc.returncode == 0, proc.stderr
    return chunk_files(trace)[0].read_bytes()


def frames(chunk: bytes) -> tuple[bytes, bytes, int]:
    """A version-3 chunk's side and heavy frame contents, and its packet count."""
    c = read_chunk(chunk, "real")
    return c.side, c.heavy, int(c.header["n_packets"])


def rewrap(side: bytes, heavy: bytes, n_packets: int) -> bytes:
    """A version-3 chunk with valid checksums around arbitrary frame contents."""
    zstd = zstandard.ZstdCompressor(level=1)
    side_frame, heavy_frame = zstd.compress(side), zstd.compress(heavy)
    return chunk_header(0, n_packets, side_frame, len(side), heavy_frame, len(heavy), 0, (0, 0, 0)) + side_frame + \
        heavy_frame


def check_well_formed(packets):
    for p in packets:
        assert len(p.mem_addr) == len(p.mem_value) == len(p.mem_info) <= F.CAP_MEM
        assert len(p.exec) <= F.CAP_EXEC and len(p.events) <= F.CAP_EVENT
        assert p.events.dtype == F.EVENT_DTYPE and p.blocks.dtype == F.BLOCK_DTYPE
        assert len(p.reg_value) == len(p.reg_info) <= F.CAP_REG


def decode_or_reject(data: bytes):
    try:
        check_well_formed(decode_chunk_bytes(data, "000042.zst"))
    except ChunkError as exc:
        assert exc.chunk == "000042.zst"


def test_real_chunk_decodes(real_chunk):
    packets = decode_chunk_bytes(real_chunk, "000000.zst")
    assert packets and sum(len(p.exec) for p in packets) > 0
    check_well_formed(packets)


FIXTURES = Path(__file__).parent / "fixtures"
KNOWN = json.loads((FIXTURES / "known_stores.json").read_text())


@pytest.mark.parametrize("version", [1, 2, 3])
def test_chunks_written_by_older_releases_still_decode(version):
    """Bytes the releases that wrote formats 1, 2 and 3 produced (tests/fixtures/README.md),
    against what the guest's source and ELF file say it did."""
    trace = FIXTURES / f"format_v{version}"
    meta = json.loads((trace / "meta.json").read_text())
    packets = decode_chunk_bytes((trace / "chunks" / "000000.zst").read_bytes(), "000000.zst")
    assert {p.version for p in packets} == {version} and meta["format_version"] == version
    check_well_formed(packets)
    writes = {(int(a), int(1 << (i & F.MEMINFO_SHIFT_MASK)), int(v)) for p in packets
              for a, i, v in zip(p.mem_addr, p.mem_info, p.mem_value) if i & F.MEMINFO_STORE}
    for name, (size, value) in KNOWN["stores"].items():
        assert (KNOWN["symbols"][name], size, value) in writes, name
    assert sum(len(p.mem_addr) for p in packets) == meta["counts"]["mem_events"]
    assert sum(len(p.exec) for p in packets) == meta["counts"]["blocks_executed"]
    calls = [e for p in packets for e in p.events if e["kind"] == F.EV_SYSCALL]
    assert int(calls[-1]["v"][1]) == KNOWN["exit_status"]  # exit_group(42)


@pytest.mark.parametrize("version", [1, 2])
def test_indexing_formats_before_3_is_refused_in_one_line(version, tmp_path):
    copy = tmp_path / "old.cannoli"
    shutil.copytree(FIXTURES / f"format_v{version}", copy)
    proc = run_cannoli("index", copy)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"record format {version}" in proc.stderr and "record the program again" in proc.stderr
    assert run_cannoli("info", copy).returncode == 0


def test_a_format_3_recording_still_indexes_and_answers(tmp_path):
    """Format 3 differs from 4 only in how memory sections are stored: its
    recordings index and answer who-wrote as new ones do."""
    copy = tmp_path / "v3.cannoli"
    shutil.copytree(FIXTURES / "format_v3", copy)
    assert run_cannoli("index", copy).returncode == 0
    for name, (size, value) in KNOWN["stores"].items():
        proc = run_cannoli("who-wrote", copy, hex(KNOWN["symbols"][name]), "--format", "json")
        assert proc.returncode == 0, proc.stderr
        rows = json.loads(proc.stdout)
        assert rows and int(rows[0]["size"]) == size and int(str(rows[0]["value"]), 0) == value, rows


@pytest.mark.parametrize("real_chunk", ["10"], indirect=True)
def test_qemu_10_chunk_has_named_register_records(real_chunk):
    packets = decode_chunk_bytes(real_chunk, "000000.zst")
    named = {int(e["v"][0]) for p in packets for e in p.events if e["kind"] == F.EV_REG_NAME}
    numbers = {int(n) for p in packets for n in p.reg_info & F.REGINFO_NUMBER_MASK}
    assert numbers and numbers <= named


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(data=st.data())
def test_mutated_chunk_bytes(real_chunk, data):
    buf = bytearray(real_chunk)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    decode_or_reject(bytes(buf))


@SETTINGS
@given(cut=st.integers(0, 10_000))
def test_truncated_chunk(real_chunk, cut):
    decode_or_reject(real_chunk[: max(0, len(real_chunk) - 1 - cut)])


@SETTINGS
@given(data=st.data())
def test_mutated_packets_with_valid_checksums(real_chunk, data):
    side, heavy, n_packets = frames(real_chunk)
    side, heavy = bytearray(side), bytearray(heavy)
    # aim mutations at the packet header (counts, magic) as often as at the data
    header_span = F.PACKET_HEADER_DTYPE.itemsize
    for _ in range(data.draw(st.integers(1, 6))):
        target = side if data.draw(st.booleans()) or not heavy else heavy
        limit = header_span - 1 if target is side and data.draw(st.booleans()) else len(target) - 1
        pos = data.draw(st.integers(0, limit))
        target[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, 64))
    if data.draw(st.booleans()):
        side = side[: len(side) - cut]
    else:
        heavy = heavy[: max(0, len(heavy) - cut)]
    decode_or_reject(rewrap(bytes(side), bytes(heavy), n_packets))


def test_oversized_claim_is_rejected_before_allocation(real_chunk):
    forged = bytearray(real_chunk[: F.CHUNK_HEADER_DTYPE.itemsize])
    header = np.frombuffer(forged, F.CHUNK_HEADER_DTYPE).copy()
    header["side_raw"] = F.MAX_CHUNK_RAW + 1
    header["header_crc32"] = 0
    header["header_crc32"] = zlib.crc32(header.tobytes())
    with pytest.raises(ChunkError, match="limit"):
        decode_chunk_bytes(header.tobytes() + real_chunk[F.CHUNK_HEADER_DTYPE.itemsize :], "x")
