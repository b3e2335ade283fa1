"""The live line `cannoli record` shows on a terminal while the guest runs:
guest instructions so far, events per second, bytes on disk, elapsed time.
Nothing is shown when stderr is not a terminal (or with progress=False)."""

from __future__ import annotations

import sys
import time

UPDATE_EVERY = 0.25  # seconds


class LiveLine:
    def __init__(self, enabled: bool | None, ring, stats, writer, started: float):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.ring, self.stats, self.writer, self.started = ring, stats, writer, started
        self._live = None
        self._last = (started, 0)
        self._next = 0.0

    def __enter__(self) -> LiveLine:
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            self._live = Live("", console=Console(stderr=True), transient=True, auto_refresh=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def update(self) -> None:
        now = time.monotonic()
        if self._live is None or now < self._next:
            return
        self._next = now + UPDATE_EVERY
        from .ring import ring_header

        instructions = ring_header(self.ring)["next_idx"]
        events = self.stats.blocks_executed + self.stats.mem_events
        then, before = self._last
        rate = (events - before) / max(now - then, 1e-9)
        self._last = (now, events)
        self._live.update(f"cannoli: recording: {instructions:,} instructions, {rate / 1e6:,.1f} M events/s, "
                          f"{self.writer.bytes_written / 2**20:,.1f} MiB on disk, {now - self.started:,.1f} s",
                          refresh=True)
