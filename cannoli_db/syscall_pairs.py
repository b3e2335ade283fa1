"""The rule that pairs a syscall entry with its return, for the recorder's
summary, the index and the tests alike: a thread's SYSRET event answers its
latest SYSCALL that has no answer yet; a SYSCALL with none (exit, a thread
killed inside a call, a trace that ends first) never returned.  Events are fed
per stream in the stream's order."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import numpy as np

from . import format as F


class SyscallPairs:
    def __init__(self) -> None:
        self.open: dict[int, Hashable] = {}             # stream -> its entry waiting for a return
        self.returns: dict[Hashable, int | None] = {}   # entry -> return value (None: none yet)

    def feed(self, stream: int, events: np.ndarray, keys: Iterable[Hashable]) -> None:
        """Events of one stream, in order, each with the key its entry is known by."""
        for ev, key in zip(events, keys):
            if ev["kind"] == F.EV_SYSCALL:
                self.open[stream] = key
                self.returns[key] = None
            elif ev["kind"] == F.EV_SYSRET and stream in self.open:
                self.returns[self.open.pop(stream)] = int(np.int64(ev["v"][1]))
