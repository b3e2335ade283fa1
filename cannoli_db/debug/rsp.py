"""GDB remote serial protocol framing: `$payload#cs` packets, acks, escapes.

Everything that arrives is untrusted.  `Decoder` is an incremental parser:
feed it whatever bytes the connection gave and it returns the events they
complete.  It never holds more than MAX_PACKET bytes of a packet: a longer one
is skipped up to its `#cs` and reported as a `BadPacket`, and so is a packet
with a wrong checksum, a dangling `}` escape or a bad run-length count.

On the wire (GDB manual, "Remote Protocol" > "Overview"): the checksum is the
sum of the bytes between `$` and `#` modulo 256, as two hex digits; `}`
escapes the byte that follows (XOR 0x20); `*` followed by a byte c repeats
the byte before it c - 29 more times.  `encode` escapes `$ # } *` and never
run-length encodes.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PACKET = 1 << 16  # bytes of one packet's payload, raw or decoded
ESCAPE = 0x7D  # }
RUN = 0x2A  # *
_SPECIAL = frozenset(b"$#}*")
_HEX = frozenset(b"0123456789abcdefABCDEF")
# a run-length count byte: ' ' (3 more) .. '~' (97 more), but never '#' or '$'
_RUN_COUNTS = frozenset(range(0x20, 0x7F)) - {ord("#"), ord("$")}


@dataclass(frozen=True)
class Packet:
    payload: bytes


@dataclass(frozen=True)
class BadPacket:
    reason: str


@dataclass(frozen=True)
class Ack:
    ok: bool  # '+' (True) or '-' (False)


@dataclass(frozen=True)
class Interrupt:
    """The 0x03 byte gdb sends for Ctrl-C."""


Event = Packet | BadPacket | Ack | Interrupt


def checksum(raw: bytes) -> int:
    return sum(raw) & 0xFF


def escape(payload: bytes) -> bytes:
    out = bytearray()
    for b in payload:
        if b in _SPECIAL:
            out += bytes((ESCAPE, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def encode(payload: bytes) -> bytes:
    """One packet on the wire."""
    raw = escape(payload)
    return b"$" + raw + b"#" + b"%02x" % checksum(raw)


def unescape(raw: bytes) -> bytes:
    """The payload of a packet's raw bytes (between `$` and `#`); ValueError if malformed or
    longer than MAX_PACKET once run-lengths are expanded."""
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        b = raw[i]
        if b == ESCAPE:
            if i + 1 >= n:
                raise ValueError("a '}' escape ends the packet")
            out.append(raw[i + 1] ^ 0x20)
            i += 2
        elif b == RUN:
            if not out or i + 1 >= n or raw[i + 1] not in _RUN_COUNTS:
                raise ValueError("a '*' run-length has no byte to repeat or a bad count")
            out += out[-1:] * (raw[i + 1] - 29)
            i += 2
        else:
            out.append(b)
            i += 1
        if len(out) > MAX_PACKET:
            raise ValueError(f"the packet is longer than {MAX_PACKET} bytes")
    return bytes(out)


class Decoder:
    """Bytes in, events out; memory bounded by MAX_PACKET whatever arrives."""

    def __init__(self):
        self._raw = bytearray()
        self._state = "idle"  # idle | body | sum1 | sum2
        self._sum = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        i, n = 0, len(data)
        while i < n:
            if self._state == "body":  # take the run up to the next '#' or '$' at once
                stop = min((k for k in (data.find(b"#", i), data.find(b"$", i)) if k >= 0), default=n)
                room = MAX_PACKET - len(self._raw)
                self._overflow |= stop - i > room
                self._raw += data[i: i + min(stop - i, room)]
                i = stop
                if i == n:
                    break
            event = self._byte(data[i])
            i += 1
            if event is not None:
                events.append(event)
        return events

    def _byte(self, b: int) -> Event | None:
        if self._state == "idle":
            return self._idle(b)
        if self._state == "body":  # feed hands over only the '#' or '$' that ends a body
            if b == ord("#"):
                self._state = "sum1"
                return None
            self._start()
            return BadPacket("a packet was cut off by a new '$'")
        self._sum.append(b)
        if self._state == "sum1":
            self._state = "sum2"
            return None
        self._state = "idle"
        return self._finish()

    def _idle(self, b: int) -> Event | None:
        if b == ord("$"):
            self._start()
        elif b == ord("+"):
            return Ack(True)
        elif b == ord("-"):
            return Ack(False)
        elif b == 0x03:
            return Interrupt()
        return None  # noise between packets is ignored, as gdb does

    def _start(self) -> None:
        self._raw.clear()
        self._sum.clear()
        self._overflow = False
        self._state = "body"

    def _finish(self) -> Event:
        if self._overflow:
            return BadPacket(f"a packet longer than {MAX_PACKET} bytes")
        if not all(c in _HEX for c in self._sum) or int(self._sum, 16) != checksum(self._raw):
            return BadPacket("bad checksum")
        try:
            return Packet(unescape(bytes(self._raw)))
        except ValueError as exc:
            return BadPacket(str(exc))
