"""Traces recorded in format versions 1 and 2 (before the plugin drew positions).

Their segments carry a ring-wide sequence number instead of positions; this
module turns their side data into what version 3 says directly, so that the
rest of the index reads every version alike."""

from __future__ import annotations

from ..errors import CannoliError


def normalise(files, plan, events) -> None:
    raise CannoliError("this trace was recorded in format version 1 or 2; re-record it with this cannoli")
