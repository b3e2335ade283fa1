"""Every event of a trace with its stream, the strings they carry, and the one
rule that pairs a syscall with its return."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import format as F
from ..decode import ChunkError
from ..syscall_pairs import SyscallPairs

# Where an event's blob lies: (offset, length) value indices, by event kind
_BLOB_FIELDS = {F.EV_BLOB: (1, 2), F.EV_REG_NAME: (1, 2), F.EV_PROCESS: (5, 6)}

EVENT_TABLE_DTYPE = np.dtype([("stream", "<u8"), ("pid", "<u4"), ("tid", "<u4"), ("packet_seq", "<u8"),
                              ("i", "<u4"), ("kind", "<u2"), ("ordinal", "<u8"), ("seq", "<u8"),
                              ("v", "<u8", (7,))])


@dataclass
class EventLog:
    """Every event of the trace with its thread, plus the strings they carry."""

    rows: list = field(default_factory=list)   # (stream, pid, tid, packet_seq, events array)
    blobs: dict = field(default_factory=dict)  # (stream, packet_seq, event index) -> bytes

    def add(self, stream: int, pid: int, tid: int, packet_seq: int, events: np.ndarray, blob: np.ndarray,
            chunk: str) -> None:
        if not len(events):
            return
        self.rows.append((stream, pid, tid, packet_seq, events.copy()))
        for i in np.flatnonzero(np.isin(events["kind"], list(_BLOB_FIELDS))):
            ev = events[i]
            at, size = _BLOB_FIELDS[int(ev["kind"])]
            off, length = int(ev["v"][at]), int(ev["v"][size])
            if off + length > len(blob):
                raise ChunkError(chunk, "event points outside its packet's blob section")
            self.blobs[(stream, packet_seq, int(i))] = bytes(blob[off: off + length])

    def blob(self, e) -> bytes:
        return self.blobs.get((int(e["stream"]), int(e["packet_seq"]), int(e["i"])), b"")

    def register_names(self) -> list[str]:
        """Register names by number (CN_EV_REG_NAME); unnamed numbers get regN."""
        ev = self.table()
        named = {}
        for e in ev[ev["kind"] == F.EV_REG_NAME]:
            number = int(e["v"][0])
            if number < F.MAX_REGS:
                named[number] = self.blob(e).decode("ascii", "replace")
        return [named.get(n, f"reg{n}") for n in range(F.MAX_REGS)]

    def table(self) -> np.ndarray:
        """All events as one structured array, in stream order."""
        if getattr(self, "_table", None) is not None and self._table_rows == len(self.rows):
            return self._table
        parts = []
        for stream, pid, tid, pseq, events in self.rows:
            part = np.zeros(len(events), EVENT_TABLE_DTYPE)
            part["stream"], part["pid"], part["tid"], part["packet_seq"] = stream, pid, tid, pseq
            part["i"] = np.arange(len(events))
            for name in ("kind", "ordinal", "seq", "v"):
                part[name] = events[name]
            parts.append(part)
        table = np.concatenate(parts) if parts else np.zeros(0, EVENT_TABLE_DTYPE)
        self._table = table[np.lexsort((table["i"], table["packet_seq"], table["stream"]))]
        self._table_rows = len(self.rows)
        return self._table


def pair_syscalls(ev: np.ndarray) -> dict[tuple[int, int, int], int | None]:
    """The return value of each syscall entry, keyed (stream, packet_seq, event
    index): the thread's next SYSRET event after it; None if it never returned.
    `ev` is EventLog.table() (stream order)."""
    pairs = SyscallPairs()
    calls = ev[np.isin(ev["kind"], (F.EV_SYSCALL, F.EV_SYSRET))]
    for stream in np.unique(calls["stream"]):
        mine = calls[calls["stream"] == stream]
        pairs.feed(int(stream), mine, zip(mine["stream"].tolist(), mine["packet_seq"].tolist(), mine["i"].tolist()))
    return pairs.returns
