"""GDB remote-protocol framing (cannoli_db/debug/rsp.py) and the server's
handling of untrusted input: round trips, the GDB manual's own examples of
escaping and run-length encoding, and arbitrary or oversized bytes, which
must never raise past the server nor make it hold more than a packet."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cannoli_db import Trace
from cannoli_db.debug import rsp
from cannoli_db.debug.history import History
from cannoli_db.debug.server import Session, serve

COMMANDS = [*"qQvgpmMXGPZzcsCSHTkD?", "bc", "bs", "qXfer:features:read:target.xml:", "qXfer:auxv:read::",
            "qXfer:libraries-svr4:read::", "vCont;", "qRcmd,", "qThreadExtraInfo,", "Hg", "Z2,", "Z0,"]


def framed(raw: bytes) -> bytes:
    """A packet whose raw bytes (already escaped or run-length encoded) are `raw`."""
    return b"$" + raw + b"#" + b"%02x" % (sum(raw) & 0xFF)


def feed_in_pieces(data: bytes, cuts: list[int]) -> list:
    decoder, events, at = rsp.Decoder(), [], 0
    for cut in sorted(cuts):
        events += decoder.feed(data[at:cut])
        at = max(at, cut)
    return events + decoder.feed(data[at:])


@given(st.binary(max_size=3000), st.lists(st.integers(0, 6000), max_size=8))
def test_any_payload_survives_encode_and_decode_however_it_is_cut(payload, cuts):
    assert feed_in_pieces(rsp.encode(payload), cuts) == [rsp.Packet(payload)]


def test_the_manuals_examples_of_escaping_and_run_length_decode():
    # GDB manual, "Overview": 0x7d is sent as 0x7d 0x5d; "0* " means "0000"
    assert rsp.Decoder().feed(framed(b"}]")) == [rsp.Packet(b"}")]
    assert rsp.Decoder().feed(framed(b"0* ")) == [rsp.Packet(b"0000")]
    assert rsp.encode(b"$#}*") == framed(b"}\x04}\x03}]}\x0a")


def test_acks_interrupts_and_damage_are_told_apart():
    events = rsp.Decoder().feed(b"+-\x03" + framed(b"g")[:-1] + b"0" + b"$}#7d" + b"$*a#8b" + framed(b"?"))
    assert events[:3] == [rsp.Ack(True), rsp.Ack(False), rsp.Interrupt()]
    assert [type(e) for e in events[3:]] == [rsp.BadPacket, rsp.BadPacket, rsp.BadPacket, rsp.Packet]


@given(st.binary(max_size=5000))
def test_arbitrary_bytes_never_raise_and_never_yield_more_than_a_packet(data):
    for event in rsp.Decoder().feed(data):
        assert isinstance(event, (rsp.Packet, rsp.BadPacket, rsp.Ack, rsp.Interrupt))
        if isinstance(event, rsp.Packet):
            assert len(event.payload) <= rsp.MAX_PACKET


@pytest.mark.parametrize("raw", [b"a" * (8 << 20), b"a*~" * 2000], ids=["long", "run-lengths"])
def test_an_oversized_packet_is_refused_in_bounded_memory(raw):
    decoder = rsp.Decoder()
    data = framed(raw)
    tracemalloc.start()
    try:
        events = [e for at in range(0, len(data), 1 << 16) for e in decoder.feed(data[at: at + (1 << 16)])]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [type(e) for e in events] == [rsp.BadPacket]
    assert peak < 4 * rsp.MAX_PACKET + (1 << 16) * 2  # a packet's buffer and one read, not the input


@pytest.fixture(scope="module")
def history(recorded):
    trace, _, _ = recorded("known_stores")
    with Trace.open(trace) as t:
        yield History(t)


def replies(output: bytes) -> list:
    return rsp.Decoder().feed(output)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(COMMANDS), st.binary(max_size=40)), max_size=6))
def test_malformed_commands_get_replies_never_exceptions(history, commands):
    session = Session.open(history)
    for head, tail in commands:
        for reply in session.handle(head.encode() + tail):
            assert len(rsp.encode(reply)) <= 2 * 0x4000 + 4


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=10))
def test_the_server_loop_survives_any_byte_stream(history, chunks):
    session = Session.open(history)
    pending, out = list(chunks), bytearray()
    serve(session, lambda: pending.pop(0) if pending else b"", out.extend)
    assert all(isinstance(e, (rsp.Packet, rsp.Ack)) for e in replies(bytes(out)))


def test_a_whole_exchange_with_acks_and_no_ack_mode(history):
    session = Session.open(history)
    inbound = [framed(b"qSupported:swbreak+"), b"+", framed(b"QStartNoAckMode"), b"+", framed(b"?"),
               framed(b"g")[:-2] + b"00", framed(b"m0,4")]
    out = bytearray()
    serve(session, lambda: inbound.pop(0) if inbound else b"", out.extend)
    events = replies(bytes(out))
    assert events[0] == rsp.Ack(True) and events[1].payload.startswith(b"PacketSize=4000;")
    assert events[2:4] == [rsp.Ack(True), rsp.Packet(b"OK")]  # the last ack before no-ack mode
    assert events[4].payload.startswith(b"T05thread:")
    assert events[5] == rsp.Packet(b"E01")  # a damaged packet in no-ack mode: an error, not a '-'
    assert events[6] == rsp.Packet(b"E14")  # address 0: no recorded access, no file maps it


@pytest.mark.parametrize("packet", [b"vCont;c:1", b"vCont;s:1", b"Hg1", b"Hc1", b"m1,", b"Z2,0,0", b"p99999",
                                    b"qXfer:features:read:target.xml:zz", b"qRcmd,zz", b"M0,1:00", b"P0=00"])
def test_packets_naming_no_such_thread_or_malformed_get_an_error(history, packet):
    assert Session.open(history).handle(packet) == [b"E01"]
