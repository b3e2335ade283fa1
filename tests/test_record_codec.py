"""The version-4 record codec (qemu_patches/record_codec.c,
cannoli_db/native/record_codec.py): memory accesses and register records.

The C decoder is checked against a second decoder written here in numpy from
the prose of cannoli_format.h ("records on disk"), on real recordings;
encoding then decoding gives back any records; and damaged bytes are refused,
never misread past a section or crashed on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cannoli_db import format as F
from cannoli_db.decode import chunk_files, decode_packet, read_chunk_file
from cannoli_db.native import record_codec

from .conftest import QEMU_LABELS, qemu_under_test, run_cannoli

FIXTURES = Path(__file__).parent / "fixtures"
KNOWN = json.loads((FIXTURES / "known_stores.json").read_text())
U64 = np.uint64


def widths(packed: int, n: int) -> list[int]:
    return [(packed >> (8 * c)) & 0xFF for c in range(n)]


def payloads(section: np.ndarray, classes: np.ndarray, table: list[int]) -> np.ndarray:
    """Each access's payload: the section holds class 1's payloads, then class 2's, ..."""
    out, at = np.zeros(len(classes), U64), 0
    for c, width in enumerate(table):
        if not width:
            continue
        mine = np.flatnonzero(classes == c)
        raw = section[at: at + width * len(mine)].reshape(len(mine), width).astype(U64)
        out[mine] = (raw << (U64(8) * np.arange(width, dtype=U64))).sum(axis=1, dtype=U64)
        at += width * len(mine)
    assert at == len(section)
    return out


def unzigzag(u: np.ndarray) -> np.ndarray:
    return (u >> U64(1)) ^ (U64(0) - (u & U64(1)))


def per_slot(slot: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Running sums of `step` (mod 2^64) within each slot, in access order."""
    order = np.argsort(slot, kind="stable")
    s, total = slot[order], np.cumsum(step[order], dtype=U64)
    first = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    base = np.r_[U64(0), total[first[1:] - 1]]
    out = np.empty_like(total)
    out[order] = total - np.repeat(base, np.diff(np.r_[first, len(s)]))
    return out


def reference_decode(addr_s, value_s, info_s, n: int, exec_: np.ndarray, regs: bool = False):
    """(addresses, values, info words); registers: (values, info words)."""
    ctl = info_s[:n]
    explicit = (ctl & F.MEMCTL_INFO_EXPLICIT) != 0
    n_low = int(explicit.sum())
    lows = info_s[n: n + 2 * n_low].view("<u2")
    link_class = (ctl >> F.MEMCTL_LINK_SHIFT).astype(np.int64)
    step = link_class.copy()
    step[link_class == F.MEMCTL_LINK_EXPLICIT] = info_s[n + 2 * n_low:].view("<u4")
    link = np.cumsum(step) & 0xFFFFFFFF  # steps are mod 2^32
    starts = np.r_[True, link[1:] != link[:-1]]
    k = np.arange(n) - np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    inside = (link >= 1) & (link <= len(exec_))
    block = np.where(inside, exec_[np.clip(link - 1, 0, max(len(exec_) - 1, 0))] if len(exec_) else 0, 0)
    hashed = (block.astype(U64) * U64(F.MEM_SLOT_MUL_BLOCK)) & U64(0xFFFFFFFF)
    slot = ((hashed >> U64(32 - F.MEM_SLOT_BITS)) + k.astype(U64)) & U64((1 << F.MEM_SLOT_BITS) - 1)
    addr_class = (ctl >> F.MEMCTL_ADDR_SHIFT) & F.MEMCTL_ADDR_MASK
    value_class = (ctl >> F.MEMCTL_VALUE_SHIFT) & F.MEMCTL_VALUE_MASK
    addr = per_slot(slot, unzigzag(payloads(addr_s, addr_class, widths(F.MEMCTL_ADDR_WIDTHS, 4)))) if not regs else None
    value = per_slot(slot, unzigzag(payloads(value_s, value_class, widths(F.MEMCTL_VALUE_WIDTHS, 8))))
    # low info bits: the stored ones, else the slot's previous access's (0 before its first)
    order = np.argsort(slot, kind="stable")
    s = slot[order]
    stored = np.zeros(n, np.int64)
    stored[explicit] = lows
    mark = explicit[order] | np.r_[True, s[1:] != s[:-1]]
    carried = stored[order][np.maximum.accumulate(np.where(mark, np.arange(n), 0))]
    low = np.empty(n, np.int64)
    low[order] = carried
    link, low = link.astype(np.uint32), low.astype(np.uint32)
    if regs:  # low: the number, then CHANGED and KEYFRAME as bits 8-9
        info = (low & F.REGINFO_NUMBER_MASK) | link << F.REGINFO_LINK_SHIFT | (low >> 8) << 30
        return value, info.astype(np.uint32)
    return addr, value, link << F.MEMINFO_LINK_SHIFT | low


@pytest.fixture(scope="module", params=QEMU_LABELS)
def recorded_packets(guest, tmp_path_factory, request):
    """Packets of a real recording on each QEMU (10: written by its generated
    code), as views (sections as stored)."""
    trace = tmp_path_factory.mktemp("codec") / "t.cannoli"
    proc = run_cannoli("record", "--no-index", "-o", trace, *qemu_under_test(request.param).record_options,
                       guest("known_stores"), "/etc/hostname")
    assert proc.returncode == KNOWN["exit_status"], proc.stderr
    views = [v for path in chunk_files(trace) for v in read_chunk_file(path).views()]
    assert views and all(v.version == 4 for v in views)
    return views


def sections(view):
    return (view.section(F.SEC_MEM_ADDR), view.section(F.SEC_MEM_VALUE), view.section(F.SEC_MEM_INFO),
            view.n_mem, view.section(F.SEC_EXEC))


def reg_sections(view):
    return view.section(F.SEC_REG_VALUE), view.section(F.SEC_REG_INFO), view.n_regs, view.section(F.SEC_EXEC)


def test_reference_decoder_agrees_with_the_codec(recorded_packets):
    writes = set()
    for view in recorded_packets:
        mine = reference_decode(*sections(view))
        theirs = record_codec.decode_mem(*sections(view))
        for a, b in zip(mine, theirs):
            assert np.array_equal(a, b)
        value_s, info_s, n_regs, exec_ = reg_sections(view)
        for a, b in zip(reference_decode(None, value_s, info_s, n_regs, exec_, regs=True),
                        record_codec.decode_regs(*reg_sections(view))):
            assert np.array_equal(a, b)
        addr, value, info = theirs
        store = (info & F.MEMINFO_STORE) != 0
        writes |= set(zip(addr[store].tolist(), (1 << (info[store] & 7)).tolist(), value[store].tolist()))
    for name, (size, value) in KNOWN["stores"].items():
        assert (KNOWN["symbols"][name], size, value) in writes, name


def test_register_records_name_the_registers_qemu_reported(recorded_packets):
    """QEMU 10 records registers (7.2 cannot): every decoded register number
    is one the recording named in a REG_NAME event, and keyframes hold them all."""
    named = {int(e["v"][0]) for v in recorded_packets for e in v.section(F.SEC_EVENT) if e["kind"] == F.EV_REG_NAME}
    infos = [record_codec.decode_regs(*reg_sections(v))[1] for v in recorded_packets]
    numbers = {int(x) for info in infos for x in info & F.REGINFO_NUMBER_MASK}
    assert numbers <= named
    if named:
        keyframe = np.concatenate(infos)
        keyframe = keyframe[(keyframe & F.REGINFO_KEYFRAME) != 0]
        assert {int(x) for x in keyframe & F.REGINFO_NUMBER_MASK} == named


def test_a_recording_is_mostly_predicted(recorded_packets):
    """What the format is for: most accesses repeat or stride from their slot's
    previous one, so the sections take far fewer than the 20 bytes per access of the lane (format 3
    stored 13-20 before compression)."""
    n = sum(v.n_mem for v in recorded_packets)
    stored = sum(len(v.section(s)) for v in recorded_packets for s in (F.SEC_MEM_ADDR, F.SEC_MEM_VALUE,
                                                                       F.SEC_MEM_INFO))
    assert n > 2000 and stored / n < 8


def test_the_previous_release_s_packets_round_trip():
    """Accesses decoded from the stored format-3 chunk (tests/fixtures/README.md)."""
    for view in read_chunk_file(FIXTURES / "format_v3" / "chunks" / "000000.zst").views():
        p = decode_packet(view)
        encoded = [np.frombuffer(b, np.uint8) for b in record_codec.encode_mem(p.mem_addr, p.mem_value, p.mem_info,
                                                                                p.exec)]
        for a, b in zip(record_codec.decode_mem(*encoded, len(p.mem_addr), p.exec),
                        (p.mem_addr, p.mem_value, p.mem_info)):
            assert np.array_equal(a, b)
        assert np.array_equal(reference_decode(*encoded, len(p.mem_addr), p.exec)[0], p.mem_addr)
        assert len(p.reg_info), "the fixture was recorded with registers"
        encoded = [np.frombuffer(b, np.uint8) for b in record_codec.encode_regs(p.reg_value, p.reg_info, p.exec)]
        for a, b in zip(record_codec.decode_regs(*encoded, len(p.reg_info), p.exec), (p.reg_value, p.reg_info)):
            assert np.array_equal(a, b)


@st.composite
def accesses(draw):
    """Accesses as the plugin writes them (links that never go back, an
    instruction index and size per access, values at their width), or with
    links in any order, as a lane salvaged from a killed QEMU may hold."""
    n = draw(st.integers(0, 300))
    n_exec = draw(st.integers(0, 40))
    exec_ = np.array(draw(st.lists(st.integers(0, 2**32 - 1), min_size=n_exec, max_size=n_exec)), np.uint32)
    steps = draw(st.lists(st.sampled_from([0, 0, 0, 1, 1, 2, 3, 70_000]), min_size=n, max_size=n))
    link = np.minimum(np.cumsum(np.array(steps, np.int64)), (1 << 18) - 1).astype(np.uint32)
    if draw(st.booleans()):  # a salvaged lane's stale records: links in any order
        link = np.array(draw(st.lists(st.integers(0, (1 << 18) - 1), min_size=n, max_size=n)), np.uint32)
    low = np.array(draw(st.lists(st.integers(0, F.MEMINFO_LOW_MASK), min_size=n, max_size=n)), np.uint32) & ~np.uint32(
        0x4)  # sizes 1..8 bytes: shift 0..3
    pool = draw(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=6))
    addr = np.array([(draw(st.sampled_from(pool)) + draw(st.integers(-64, 64))) % 2**64 for _ in range(n)], U64)
    value = np.array(draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n)), U64)
    shift = (low & 7).astype(U64)
    value &= np.where(shift >= 3, ~U64(0), (U64(1) << (U64(8) << shift)) - U64(1))
    return addr, value, (link << F.MEMINFO_LINK_SHIFT) | low, exec_


@st.composite
def register_records(draw):
    """Register records as the plugin writes them: numbers, links that never go
    back, CHANGED and KEYFRAME flags, any 64-bit value."""
    n = draw(st.integers(0, 300))
    n_exec = draw(st.integers(0, 40))
    exec_ = np.array(draw(st.lists(st.integers(0, 2**32 - 1), min_size=n_exec, max_size=n_exec)), np.uint32)
    steps = draw(st.lists(st.sampled_from([0, 0, 1, 2, 5, 300_000]), min_size=n, max_size=n))
    link = np.minimum(np.cumsum(np.array(steps, np.int64)), F.REGINFO_LINK_MASK).astype(np.uint32)
    number = np.array(draw(st.lists(st.integers(0, F.MAX_REGS - 1), min_size=n, max_size=n)), np.uint32)
    flags = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), np.uint32)
    value = np.array(draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n)), U64)
    return value, number | link << F.REGINFO_LINK_SHIFT | flags << 30, exec_


@settings(max_examples=200, deadline=None)
@given(register_records())
def test_register_records_come_back(case):
    value, info, exec_ = case
    encoded = [np.frombuffer(b, np.uint8) for b in record_codec.encode_regs(value, info, exec_)]
    for got, want in zip(record_codec.decode_regs(*encoded, len(info), exec_), (value, info)):
        assert np.array_equal(got, want)
    for got, want in zip(reference_decode(None, *encoded, len(info), exec_, regs=True), (value, info)):
        assert np.array_equal(got, want)


@settings(max_examples=200, deadline=None)
@given(accesses())
def test_encode_then_decode_gives_the_accesses_back(case):
    addr, value, info, exec_ = case
    encoded = [np.frombuffer(b, np.uint8) for b in record_codec.encode_mem(addr, value, info, exec_)]
    for got, want in zip(record_codec.decode_mem(*encoded, len(addr), exec_), (addr, value, info)):
        assert np.array_equal(got, want)
    for got, want in zip(reference_decode(*encoded, len(addr), exec_), (addr, value, info)):
        assert np.array_equal(got, want)


@settings(max_examples=300, deadline=None)
@given(accesses(), st.data())
def test_damaged_sections_are_refused_or_decode_to_well_formed_accesses(case, data):
    addr, value, info, exec_ = case
    encoded = [bytearray(b) for b in record_codec.encode_mem(addr, value, info, exec_)]
    for _ in range(data.draw(st.integers(1, 4))):
        target = encoded[data.draw(st.integers(0, 2))]
        if target and data.draw(st.booleans()):
            target[data.draw(st.integers(0, len(target) - 1))] = data.draw(st.integers(0, 255))
        elif target:
            del target[data.draw(st.integers(0, len(target) - 1)):]
        else:
            target.extend(b"\x01")
    try:
        got_addr, got_value, got_info = record_codec.decode_mem(
            *(np.frombuffer(bytes(b), np.uint8) for b in encoded), len(addr), exec_)
    except record_codec.CodecError:
        return
    assert len(got_addr) == len(got_value) == len(got_info) == len(addr)
    shift = (got_info & F.MEMINFO_SHIFT_MASK).astype(U64)
    narrow = shift < 3
    assert np.all(shift <= 3) and np.all(got_value[narrow] >> (U64(8) << shift[narrow]) == 0)


def test_a_claim_beyond_the_lane_capacity_is_refused_before_allocation():
    with pytest.raises(record_codec.CodecError, match="limit"):
        record_codec.decode_mem(np.zeros(0, np.uint8), np.zeros(0, np.uint8), np.zeros(0, np.uint8), F.CAP_MEM + 1,
                                np.zeros(0, np.uint32))
    with pytest.raises(record_codec.CodecError, match="limit"):
        record_codec.decode_regs(np.zeros(0, np.uint8), np.zeros(0, np.uint8), F.CAP_REG + 1, np.zeros(0, np.uint32))


def test_every_decoder_error_has_a_message():
    """The codes come from record_codec.h (cffi reads it); each one a decoder can
    return is said in words, and nothing else is."""
    header = (Path(__file__).parent.parent / "qemu_patches" / "record_codec.h").read_text()
    codes = set(re.findall(r"\b(CN_MEM_\w+) = [1-9]", header))
    assert codes and codes == set(record_codec.ERRORS)
    lib = record_codec._library()
    assert sorted(getattr(lib, name) for name in codes) == list(range(1, len(codes) + 1))
